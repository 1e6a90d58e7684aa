//! Side effects written by Command steps: which attempt ran, when, with
//! which inputs, and the processes it left.

use std::{
    collections::{BTreeMap, HashMap},
    path::Path,
};

use nix::{sys::signal::kill, unistd::Pid};
use uuid::Uuid;

#[derive(Debug, Clone)]
pub struct Start {
    pub step: String,
    pub attempt: i32,
    pub at_ns: i128,
    pub pid: i32,
    pub inputs: BTreeMap<String, String>,
}

#[derive(Debug, Default)]
pub struct Effects {
    /// (execution, step) -> starts in file order.
    pub starts: HashMap<(Uuid, String), Vec<Start>>,
    /// (execution, step, attempt) -> (end time, ok).
    pub ends: HashMap<(Uuid, String, i32), (i128, bool)>,
    /// Background children: (execution, step, attempt, pid).
    pub background: Vec<(Uuid, String, i32, i32)>,
}

pub fn read_effects(dir: &Path) -> Effects {
    let mut effects = Effects::default();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return effects;
    };
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for line in text.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            let parse = || -> Option<(Uuid, String, i32)> {
                Some((
                    Uuid::parse_str(f.get(1)?).ok()?,
                    f.get(2)?.to_string(),
                    f.get(3)?.parse().ok()?,
                ))
            };
            let Some((execution, step, attempt)) = parse() else {
                continue;
            };
            match f[0] {
                "start" if f.len() >= 7 => {
                    let inputs = if f[6] == "-" {
                        BTreeMap::new()
                    } else {
                        f[6].split(';')
                            .filter_map(|kv| kv.split_once('='))
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect()
                    };
                    effects
                        .starts
                        .entry((execution, step.clone()))
                        .or_default()
                        .push(Start {
                            step,
                            attempt,
                            at_ns: f[4].parse().unwrap_or(0),
                            pid: f[5].parse().unwrap_or(0),
                            inputs,
                        });
                }
                "bg" if f.len() >= 5 => effects
                    .background
                    .push((execution, step, attempt, f[4].parse().unwrap_or(0))),
                "end" if f.len() >= 6 => {
                    effects
                        .ends
                        .insert((execution, step, attempt), (f[4].parse().unwrap_or(0), f[5] == "ok"));
                }
                _ => {}
            }
        }
    }
    effects
}

/// Whether `pid` is alive (not a zombie) and its command line contains
/// `marker` (so a reused pid is not mistaken for ours).
pub fn alive_with(pid: i32, marker: &str) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    let state_ok = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|s| s != "Z" && s != "X")
    });
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default();
    state_ok && cmdline.contains(marker)
}
