"""Validates Green Button feeds against the official ESPI 3.3 schemas and conventions.

usage: python3 tests/espi_schema.py FEED.xml [FEED.xml ...]

For every feed (independently of the Rust writer; Python's xml.etree, uuid, zoneinfo and
xmllint from Debian's libxml2-utils):
1. the Atom wrapper (every atom:content emptied) validates against atom.xsd;
2. every ESPI element inside an atom:content, extracted into a document of its own, validates
   against usage.xsd (a whole-feed run would stop at the first wrapper error and never look at
   the content: Atom's content is a strict wildcard);
3. conventions: every link has a type, every entry rel="self" and rel="up", the feed
   rel="self", hrefs absolute, atom:id = urn:uuid:UUIDv5(URL namespace, self href), every
   related link resolves to an entry or a collection of the feed, a LocalTimeParameters entry
   linked from each UsagePoint, an ElectricPowerUsageSummary with bill and currency;
4. the DST day: the LocalTimeParameters rules, decoded as a consumer would, give the same
   transitions as the IANA zone named in the entry title, and every IntervalBlock covers one
   local day by those rules (starts at local midnight unless it is a channel's first);
5. structure equals the Green Button Alliance sample (tests/data/greenbutton-sample.xml):
   resource path templates, link relations per resource kind, child element order.
Exits 1 naming each problem.
"""
import calendar
import copy
import datetime as dt
import glob
import os
import re
import subprocess
import sys
import tempfile
import uuid
import xml.etree.ElementTree as ET
import zoneinfo

HERE = os.path.dirname(os.path.abspath(__file__))
SCHEMAS = os.path.join(HERE, "..", "schemas", "espi-3.3")
SAMPLE = os.path.join(HERE, "data", "greenbutton-sample.xml")
A = "{http://www.w3.org/2005/Atom}"
E = "{http://naesb.org/espi}"
ET.register_namespace("", "http://www.w3.org/2005/Atom")
ET.register_namespace("espi", "http://naesb.org/espi")

problems = []


def fail(feed, what):
    problems.append(f"{os.path.basename(feed)}: {what}")


def xmllint(schema, files):
    """Validates files against schema in one xmllint run; returns the error lines."""
    env = dict(os.environ, XML_CATALOG_FILES=os.path.join(SCHEMAS, "catalog.xml"))
    out = subprocess.run(
        ["xmllint", "--nonet", "--noout", "--schema", os.path.join(SCHEMAS, schema), *files],
        capture_output=True, text=True, env=env)
    errors = [l for l in out.stderr.splitlines() if not l.endswith(" validates")]
    if out.returncode != 0 and not errors:
        errors = [f"xmllint exit {out.returncode}"]
    return errors


def kind_of(entry):
    content = entry.find(A + "content")
    kids = list(content) if content is not None else []
    return kids[0].tag[len(E):] if kids and kids[0].tag.startswith(E) else None


def links(elem):
    return [(l.get("rel"), l.get("href"), l.get("type")) for l in elem.findall(A + "link")]


def template(href, base):
    """A resource path with its ids replaced: RetailCustomer/{}/UsagePoint/{}."""
    rel = href[len(base):].strip("/").split("/")
    names = {"RetailCustomer", "UsagePoint", "MeterReading", "IntervalBlock", "ReadingType",
             "LocalTimeParameters", "ElectricPowerUsageSummary", "ElectricPowerQualitySummary",
             "Batch", "Subscription"}
    return "/".join(p if p in names else "{}" for p in rel)


def decode_rule(hexrule, year, offset_before):
    """DstRuleType -> the UTC instant of the transition in `year` (None if disabled)."""
    r = int(hexrule, 16)
    if r == 0xFFFFFFFF:
        return None
    seconds, hours = r & 0xFFF, (r >> 12) & 0x1F
    dow, dom, op, month = (r >> 17) & 0x7, (r >> 20) & 0x1F, (r >> 25) & 0x7, (r >> 28) & 0xF
    days = calendar.monthrange(year, month)[1]
    weekdays = [d for d in range(1, days + 1) if dt.date(year, month, d).isoweekday() == dow]
    if op == 0:
        day = dom
    elif op == 1:
        day = next(d for d in weekdays if d >= dom)
    elif op == 7:
        day = weekdays[-1]
    else:
        day = weekdays[op - 2]
    wall = dt.datetime(year, month, day) + dt.timedelta(hours=hours, seconds=seconds)
    return (wall - dt.timedelta(seconds=offset_before)).replace(tzinfo=dt.timezone.utc)


def dedup(tags):
    """Tags in order, repeats collapsed (IntervalReading × 96 -> once)."""
    out = []
    for t in tags:
        if not out or out[-1] != t:
            out.append(t)
    return out


def sample_structure():
    root = ET.parse(SAMPLE).getroot()
    base = "/espi/1_1/resource"
    out = {"templates": {}, "related": {}, "order": {}}
    for entry in root.findall(A + "entry"):
        k = kind_of(entry)
        if k is None:
            continue
        for rel, href, _ in links(entry):
            if rel == "self":
                out["templates"][k] = template(href, base)
            if rel == "related":
                out["related"].setdefault(k, set()).add(template(href, base))
        res = entry.find(A + "content")[0]
        out["order"].setdefault(k, [c.tag for c in res])
        for ir in res.findall(E + "IntervalReading"):
            out["order"].setdefault("IntervalReading", [c.tag for c in ir])
    return out


def check_feed(path, sample, tmp):
    root = ET.parse(path).getroot()
    if root.tag != A + "feed":
        fail(path, f"root is {root.tag}")
        return 0, 0
    feed_links = links(root)
    if not re.fullmatch(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}",
                        root.findtext(A + "id") or ""):
        fail(path, f"feed id {root.findtext(A + 'id')!r} is not urn:uuid")
    if not any(rel == "self" for rel, _, _ in feed_links):
        fail(path, "the feed has no rel=self link")
    base = None
    entries = root.findall(A + "entry")
    selfs, ups, by_kind = {}, set(), {}
    for entry in entries:
        k = kind_of(entry)
        ls = links(entry)
        for rel, href, ty in ls + feed_links:
            if not ty or not re.fullmatch(r"espi-(entry|feed)/[A-Za-z]+", ty):
                fail(path, f"{k}: link {rel} {href} has type {ty!r}")
            if not re.match(r"https?://[^/]+/", href or ""):
                fail(path, f"{k}: href {href!r} is not absolute")
        self_href = [h for r, h, _ in ls if r == "self"]
        up_href = [h for r, h, _ in ls if r == "up"]
        if len(self_href) != 1 or len(up_href) != 1:
            fail(path, f"{k}: {len(self_href)} self and {len(up_href)} up links")
            continue
        want = "urn:uuid:" + str(uuid.uuid5(uuid.NAMESPACE_URL, self_href[0]))
        if entry.findtext(A + "id") != want:
            fail(path, f"{k}: id {entry.findtext(A + 'id')} is not {want}")
        if base is None:
            m = re.match(r"(.*?/)(RetailCustomer|LocalTimeParameters|ReadingType)/", self_href[0])
            base = m.group(1).rstrip("/") if m else None
        selfs[self_href[0]] = k
        ups.add(up_href[0])
        by_kind.setdefault(k, []).append(entry)
        if not self_href[0].startswith(up_href[0] + "/"):
            fail(path, f"{k}: self {self_href[0]} is not under up {up_href[0]}")
    for entry in entries:
        k = kind_of(entry)
        for rel, href, ty in links(entry):
            if rel == "related" and href not in selfs and href not in ups:
                fail(path, f"{k}: related {href} resolves to nothing in the feed")
    for k in ["UsagePoint", "MeterReading", "ReadingType", "IntervalBlock", "LocalTimeParameters",
              "ElectricPowerUsageSummary"]:
        if k not in by_kind:
            fail(path, f"no {k} entry")
    for up in by_kind.get("UsagePoint", []):
        if not any(r == "related" and t == "espi-entry/LocalTimeParameters" and selfs.get(h) == "LocalTimeParameters"
                   for r, h, t in links(up)):
            fail(path, "a UsagePoint does not link its LocalTimeParameters")
    for s in by_kind.get("ElectricPowerUsageSummary", []):
        res = s.find(A + "content")[0]
        for child in ["billingPeriod", "billLastPeriod", "currency", "statusTimeStamp"]:
            if res.find(E + child) is None:
                fail(path, f"ElectricPowerUsageSummary has no {child}")

    # 1 + 2: schemas.
    wrapper = copy.deepcopy(root)
    for content in wrapper.iter(A + "content"):
        for c in list(content):
            content.remove(c)
    name = os.path.basename(path)
    wpath = os.path.join(tmp, name + ".wrapper.xml")
    ET.ElementTree(wrapper).write(wpath, xml_declaration=True, encoding="UTF-8")
    for e in xmllint("atom.xsd", [wpath]):
        fail(path, "atom.xsd: " + e)
    parts = []
    for i, content in enumerate(root.iter(A + "content")):
        for j, res in enumerate(content):
            p = os.path.join(tmp, f"{name}.{i}.{j}.xml")
            ET.ElementTree(res).write(p, xml_declaration=True, encoding="UTF-8")
            parts.append(p)
    for e in xmllint("usage.xsd", parts)[:20]:
        fail(path, "usage.xsd: " + e)

    # 4: the DST day.
    for lt_entry in by_kind.get("LocalTimeParameters", []):
        zone = lt_entry.findtext(A + "title")
        lt = lt_entry.find(A + "content")[0]
        std = int(lt.findtext(E + "tzOffset"))
        dst = int(lt.findtext(E + "dstOffset"))
        starts = [int(b.find(A + "content")[0].findtext(f"{E}interval/{E}start"))
                  for b in by_kind.get("IntervalBlock", [])]
        if not starts:
            continue
        year = dt.datetime.fromtimestamp(min(starts) + std, dt.timezone.utc).year
        t_start = decode_rule(lt.findtext(E + "dstStartRule"), year, std)
        t_end = decode_rule(lt.findtext(E + "dstEndRule"), year, std + dst)
        tz = zoneinfo.ZoneInfo(zone)
        jan = dt.datetime(year, 1, 1, tzinfo=dt.timezone.utc)
        iana = []
        prev = jan.astimezone(tz).dst()
        for h in range(0, 366 * 96):
            t = jan + dt.timedelta(minutes=15 * h)
            if t.year != year:
                break
            d = t.astimezone(tz).dst()
            if d != prev:
                iana.append(t)
            prev = d
        ours = [t for t in [t_start, t_end] if t is not None]
        if sorted(ours) != sorted(iana):
            fail(path, f"LocalTimeParameters give DST changes {ours}, {zone} has {iana}")
        if std != int(jan.astimezone(tz).utcoffset().total_seconds()) - int(jan.astimezone(tz).dst().total_seconds()):
            fail(path, f"tzOffset {std} is not the standard offset of {zone}")

        def local(ts):
            t = dt.datetime.fromtimestamp(ts, dt.timezone.utc)
            in_dst = t_start is not None and (t_start <= t < t_end if t_start < t_end else not (t_end <= t < t_start))
            return t.replace(tzinfo=None) + dt.timedelta(seconds=std + (dst if in_dst else 0))

        for mr_href in [h for h, k in selfs.items() if k == "MeterReading"]:
            blocks = sorted(
                (int(b.find(A + "content")[0].findtext(f"{E}interval/{E}start")),
                 int(b.find(A + "content")[0].findtext(f"{E}interval/{E}duration")),
                 [h for r, h, _ in links(b) if r == "self"][0])
                for b in by_kind.get("IntervalBlock", [])
                if [h for r, h, _ in links(b) if r == "up"][0] == mr_href + "/IntervalBlock")
            for n, (start, dur, href) in enumerate(blocks):
                a, b = local(start), local(start + dur - 1)
                if a.date() != b.date():
                    fail(path, f"{href}: spans local days {a} .. {b}")
                if n > 0 and a.time() != dt.time(0):
                    fail(path, f"{href}: starts at local {a}, not midnight")
                if not href.endswith("/" + a.date().isoformat()):
                    fail(path, f"{href}: local day by LocalTimeParameters is {a.date()}")

    # 5: the sample's structure.
    for k, entries_k in by_kind.items():
        for entry in entries_k:
            ls = links(entry)
            t = template([h for r, h, _ in ls if r == "self"][0], base or "")
            if k in sample["templates"] and t != sample["templates"][k]:
                fail(path, f"{k} path {t} differs from the sample's {sample['templates'][k]}")
            rel = {template(h, base or "") for r, h, _ in ls if r == "related"}
            extra = rel - sample["related"].get(k, set())
            if extra:
                fail(path, f"{k} links {extra}, which the sample's {k} does not")
            res = entry.find(A + "content")[0]
            order = sample["order"].get(k)
            mine = dedup([c.tag for c in res])
            order = dedup(order or [])
            if order:
                common = [c for c in mine if c in order]
                if common != [c for c in order if c in common]:
                    fail(path, f"{k} child order {common} differs from the sample's")
            sample_ir = sample["order"].get("IntervalReading", [])
            for ir in res.findall(E + "IntervalReading")[:3]:
                tags = [c.tag for c in ir]
                if tags != [c for c in sample_ir if c in tags]:
                    fail(path, f"IntervalReading order {tags} differs from the sample's")
    return len(entries), len(parts)


def main():
    feeds = sorted(f for a in sys.argv[1:] for f in glob.glob(a))
    if not feeds:
        print("no feeds given")
        sys.exit(1)
    sample = sample_structure()
    with tempfile.TemporaryDirectory() as tmp:
        for f in feeds:
            n = len(problems)
            entries, parts = check_feed(f, sample, tmp)
            print(f"{'ok  ' if len(problems) == n else 'FAIL'} {os.path.basename(f)}: "
                  f"{entries} entries, {parts} ESPI elements validated")
    if problems:
        for p in problems[:50]:
            print("problem:", p)
        print(f"{len(problems)} problem(s)")
        sys.exit(1)
    print(f"{len(feeds)} feed(s) valid against ESPI 3.3 (atom.xsd, usage.xsd)")


main()
