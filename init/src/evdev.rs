//! The ACPI power button as an input device: `button.ko` registers "Power Button" and
//! `evdev.ko` exposes it as `/dev/input/eventN`; QMP `system_powerdown` arrives as
//! EV_KEY/KEY_POWER value 1. The node must be open before READY (evdev queues events only for
//! open handles).

use std::path::{Path, PathBuf};

/// `struct input_event` on x86_64: timeval (16) | type u16 | code u16 | value i32.
pub const EVENT_SIZE: usize = 24;
const EV_KEY: u16 = 1;
const KEY_POWER: u16 = 116;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub ty: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    pub fn is_power_press(&self) -> bool {
        self.ty == EV_KEY && self.code == KEY_POWER && self.value == 1
    }

    pub fn encode(&self) -> [u8; EVENT_SIZE] {
        let mut b = [0u8; EVENT_SIZE];
        b[16..18].copy_from_slice(&self.ty.to_ne_bytes());
        b[18..20].copy_from_slice(&self.code.to_ne_bytes());
        b[20..24].copy_from_slice(&self.value.to_ne_bytes());
        b
    }
}

/// Decodes whole events from a read buffer (a trailing partial event is ignored).
pub fn parse_events(buf: &[u8]) -> Vec<InputEvent> {
    buf.chunks_exact(EVENT_SIZE)
        .map(|e| InputEvent {
            ty: u16::from_ne_bytes([e[16], e[17]]),
            code: u16::from_ne_bytes([e[18], e[19]]),
            value: i32::from_ne_bytes([e[20], e[21], e[22], e[23]]),
        })
        .collect()
}

/// Finds `/dev/input/eventN` whose device is named "Power Button" (sysfs root given for tests).
pub fn find_power_button(sys_class_input: &Path) -> Option<PathBuf> {
    let mut names: Vec<_> =
        std::fs::read_dir(sys_class_input).ok()?.flatten().map(|e| e.file_name()).collect();
    names.sort();
    names.into_iter().find_map(|n| {
        let n = n.to_str()?;
        if !n.starts_with("event") {
            return None;
        }
        let name = std::fs::read_to_string(sys_class_input.join(n).join("device/name")).ok()?;
        (name.trim() == "Power Button").then(|| PathBuf::from("/dev/input").join(n))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rt_events() {
        let evs = [
            InputEvent { ty: EV_KEY, code: KEY_POWER, value: 1 },
            InputEvent { ty: 0, code: 0, value: 0 },
            InputEvent { ty: EV_KEY, code: KEY_POWER, value: 0 },
        ];
        let mut buf: Vec<u8> = evs.iter().flat_map(|e| e.encode()).collect();
        buf.extend_from_slice(&[1, 2, 3]);
        let back = parse_events(&buf);
        assert_eq!(back, evs);
        assert_eq!(back.iter().filter(|e| e.is_power_press()).count(), 1);
    }

    #[test]
    fn finds_the_power_button_node() {
        let d = tempfile::tempdir().unwrap();
        for (ev, name) in [
            ("event0", "AT Translated Set 2 keyboard"),
            ("event1", "Power Button"),
            ("mouse0", "Power Button"),
        ] {
            std::fs::create_dir_all(d.path().join(ev).join("device")).unwrap();
            std::fs::write(d.path().join(ev).join("device/name"), format!("{name}\n")).unwrap();
        }
        assert_eq!(find_power_button(d.path()), Some(PathBuf::from("/dev/input/event1")));
        assert_eq!(find_power_button(&d.path().join("none")), None);
    }
}
