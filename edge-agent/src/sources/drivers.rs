//! The meter driver catalogue: `driver = "eastron_sdm630"` in a `modbus` source expands to
//! that meter's register map, its factory serial settings and its nameplate registers.
//!
//! Each driver is a TOML file in `edge-agent/drivers/` (compiled into the binary), whose
//! header names the datasheet and its version. Energy registers are counters in Wh, scaled
//! from the meter's own unit with the word order the datasheet gives. Where a meter offers
//! energy only as a float32 (Eastron, Janitza), the driver reads it as a counter through the
//! float's shortest decimal (what the meter's display shows); a hand-written map may not
//! (see `modbus::validate_register`). Every file is checked by this module's tests.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::Deserialize;

use super::bus::Parity;
use super::modbus::{RegisterFunction, RegisterMap};

/// Every driver: (id, TOML text). One line per driver.
const FILES: &[(&str, &str)] = &[
    ("abb_b23", include_str!("../../drivers/abb_b23.toml")),
    ("abb_b24", include_str!("../../drivers/abb_b24.toml")),
    (
        "carlo_gavazzi_em24",
        include_str!("../../drivers/carlo_gavazzi_em24.toml"),
    ),
    (
        "eastron_sdm120",
        include_str!("../../drivers/eastron_sdm120.toml"),
    ),
    (
        "eastron_sdm630",
        include_str!("../../drivers/eastron_sdm630.toml"),
    ),
    (
        "eastron_sdm72",
        include_str!("../../drivers/eastron_sdm72.toml"),
    ),
    (
        "janitza_umg604",
        include_str!("../../drivers/janitza_umg604.toml"),
    ),
    (
        "schneider_iem3255",
        include_str!("../../drivers/schneider_iem3255.toml"),
    ),
];

/// A meter's register map and nameplate.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Driver {
    pub manufacturer: String,
    pub model: String,
    /// The factory serial setting, if the datasheet gives one.
    #[serde(default = "SerialDefaults::modbus")]
    pub serial: SerialDefaults,
    #[serde(default)]
    pub nameplate: Nameplate,
    pub registers: Vec<RegisterMap>,
}

/// Serial settings a meter ships with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialDefaults {
    pub baud_rate: u32,
    pub parity: Parity,
    pub stop_bits: u8,
}

impl SerialDefaults {
    /// The Modbus serial line default (19200 baud, even parity, 1 stop bit).
    fn modbus() -> SerialDefaults {
        SerialDefaults {
            baud_rate: 19_200,
            parity: Parity::Even,
            stop_bits: 1,
        }
    }
}

/// Registers holding nameplate data.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Nameplate {
    #[serde(default)]
    pub serial: Option<NameplateField>,
    #[serde(default)]
    pub firmware: Option<NameplateField>,
    #[serde(default)]
    pub model: Option<NameplateField>,
}

/// How a nameplate register is rendered as text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TextType {
    U16,
    U32,
    Ascii,
}

/// One nameplate register.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NameplateField {
    pub address: u16,
    #[serde(default)]
    pub function: RegisterFunction,
    #[serde(rename = "type")]
    pub data_type: TextType,
    /// Registers (ASCII: two characters each).
    #[serde(default)]
    pub count: Option<u16>,
}

impl NameplateField {
    /// The registers as text; `None` for an empty or unprintable value.
    pub fn render(&self, words: &[u16]) -> Option<String> {
        let text = match self.data_type {
            TextType::U16 => words.first()?.to_string(),
            TextType::U32 => {
                let [hi, lo] = words.get(..2)? else {
                    return None;
                };
                ((u32::from(*hi) << 16) | u32::from(*lo)).to_string()
            }
            TextType::Ascii => words
                .iter()
                .flat_map(|w| w.to_be_bytes())
                .take_while(|b| *b != 0)
                .filter(|b| b.is_ascii_graphic() || *b == b' ')
                .map(char::from)
                .collect::<String>()
                .trim()
                .to_string(),
        };
        (!text.is_empty()).then_some(text)
    }
}

fn catalogue() -> &'static HashMap<&'static str, Result<Driver, String>> {
    static CATALOGUE: OnceLock<HashMap<&'static str, Result<Driver, String>>> = OnceLock::new();
    CATALOGUE.get_or_init(|| {
        FILES
            .iter()
            .map(|(id, text)| {
                let parsed = toml::from_str::<Driver>(text)
                    .map_err(|e| format!("driver file {id}.toml does not parse: {}", e.message()));
                (*id, parsed)
            })
            .collect()
    })
}

/// The driver `id`, or an error naming the drivers there are.
pub fn get(id: &str) -> Result<&'static Driver, String> {
    match catalogue().get(id) {
        Some(Ok(d)) => Ok(d),
        Some(Err(e)) => Err(e.clone()),
        None => Err(format!(
            "unknown driver {}; the catalogue has: {}",
            gridmeter_core::text::excerpt(id),
            ids().collect::<Vec<_>>().join(", ")
        )),
    }
}

/// Every driver id, sorted.
pub fn ids() -> impl Iterator<Item = &'static str> {
    FILES.iter().map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gridmeter_core::config::Problems;
    use gridmeter_core::Kind;

    /// Every driver file parses, names its datasheet, and every register passes the checks a
    /// hand-written map gets, except that float32 energy may be a counter; energy counters
    /// are in Wh; channel names are unique within the driver.
    #[test]
    fn every_driver_file_is_sound() {
        let mut sorted: Vec<&str> = ids().collect();
        sorted.sort_unstable();
        assert_eq!(sorted, ids().collect::<Vec<_>>(), "FILES is sorted");
        for (id, text) in FILES {
            let d = get(id).unwrap_or_else(|e| panic!("{e}"));
            assert!(
                text.lines()
                    .take(3)
                    .any(|l| l.starts_with('#') && l.len() > 20),
                "{id}: the header comment names the meter"
            );
            assert!(
                text.to_lowercase().contains("version")
                    || text.contains("revision")
                    || text.contains("DOCA"),
                "{id}: the datasheet's version is named"
            );
            let mut names = std::collections::HashSet::new();
            for (j, r) in d.registers.iter().enumerate() {
                let mut p = Problems::new();
                super::super::modbus::validate_register(r, &format!("{id}[{j}]"), &mut p);
                let problems: Vec<&str> = p
                    .iter()
                    .filter(|m| !m.contains("f32 registers are approximate"))
                    .collect();
                assert!(problems.is_empty(), "{id}: {problems:?}");
                assert!(names.insert(r.channel.clone()), "{id}: {} twice", r.channel);
                if r.channel.starts_with("energy_") {
                    assert_eq!(r.kind, Kind::Counter, "{id}: {}", r.channel);
                    assert_eq!(r.unit, "Wh", "{id}: {}", r.channel);
                }
            }
            assert!(names.contains("energy_import_wh"), "{id}");
        }
        assert!(get("nope").unwrap_err().contains("eastron_sdm630"));
    }

    #[test]
    fn nameplate_text() {
        let f = |t, c| NameplateField {
            address: 0,
            function: RegisterFunction::Holding,
            data_type: t,
            count: c,
        };
        assert_eq!(
            f(TextType::U32, None).render(&[0x0132, 0xD5F0]),
            Some("20108784".into())
        );
        assert_eq!(
            f(TextType::Ascii, Some(3)).render(&[0x6945, 0x4D33, 0x0000]),
            Some("iEM3".into())
        );
        assert_eq!(f(TextType::Ascii, Some(1)).render(&[0]), None);
    }
}
