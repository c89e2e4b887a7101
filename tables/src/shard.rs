//! Which aggregator shard owns a device: `--shard I/N` aggregates the devices whose id
//! hashes to `I` modulo `N`. The hash is 64-bit FNV-1a of the id's UTF-8 bytes (offset basis
//! 0xcbf29ce484222325, prime 0x100000001b3), fixed forever: a device never changes shard
//! while `N` stays the same.

use std::fmt;
use std::str::FromStr;

/// One of `count` shards (`index` in `0..count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// The whole fleet: shard `0/1`.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    /// `index/count`, checked.
    pub fn new(index: u32, count: u32) -> Result<Shard, String> {
        if count == 0 || index >= count {
            return Err(format!(
                "shard {index}/{count}: need 0 <= index < count (e.g. 0/3, 1/3, 2/3)"
            ));
        }
        Ok(Shard { index, count })
    }

    /// Whether `device_id` belongs to this shard.
    pub fn owns(self, device_id: &str) -> bool {
        self.count <= 1
            || fnv1a(device_id.as_bytes()) % u64::from(self.count) == u64::from(self.index)
    }

    /// Whether this is the whole fleet.
    pub fn is_all(self) -> bool {
        self.count <= 1
    }
}

/// 64-bit FNV-1a.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

impl fmt::Display for Shard {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("{} is not I/N (e.g. 0/3)", gridmeter_core::text::excerpt(s)))?;
        let parse = |t: &str| {
            t.trim()
                .parse::<u32>()
                .map_err(|_| format!("{} is not I/N (e.g. 0/3)", gridmeter_core::text::excerpt(s)))
        };
        Shard::new(parse(i)?, parse(n)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_device_has_exactly_one_shard() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        let shards: Vec<Shard> = (0..3).map(|i| Shard::new(i, 3).unwrap()).collect();
        let mut counts = [0; 3];
        for d in 0..300 {
            let id = format!("meter-{d:04}");
            let owners: Vec<_> = shards.iter().filter(|s| s.owns(&id)).collect();
            assert_eq!(owners.len(), 1, "{id}");
            counts[owners[0].index as usize] += 1;
            assert!(Shard::ALL.owns(&id));
        }
        assert!(counts.iter().all(|&c| c > 60), "{counts:?}");
    }

    #[test]
    fn parses_and_refuses() {
        assert_eq!(
            "1/3".parse::<Shard>().unwrap(),
            Shard { index: 1, count: 3 }
        );
        for bad in ["3/3", "0/0", "x/2", "1", "-1/2"] {
            assert!(bad.parse::<Shard>().is_err(), "{bad}");
        }
    }
}
