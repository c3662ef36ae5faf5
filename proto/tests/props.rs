//! Property tests: the spec parser and validator on random mutations of
//! the shipped configs, and the wire decoder on random bytes and frames.
//! Bounded case counts (CI time).

use proptest::prelude::*;
use proto::spec::{compile, parse_text};
use ringmaster_proto as proto;
use serde_json::{json, Value};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

// ------------------------------------------------------------ allocation

/// Counts the largest single allocation while `WATCH` is on (this thread).
struct Counting;

thread_local! {
    static WATCH: Cell<bool> = const { Cell::new(false) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = WATCH.try_with(|w| {
            if w.get() {
                LARGEST.with(|m| m.set(m.get().max(l.size())));
            }
        });
        // SAFETY: forwarded unchanged to the system allocator.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: forwarded unchanged.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let _ = WATCH.try_with(|w| {
            if w.get() {
                LARGEST.with(|m| m.set(m.get().max(new)));
            }
        });
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The largest single allocation `f` makes.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|m| m.set(0));
    WATCH.with(|w| w.set(true));
    let out = f();
    WATCH.with(|w| w.set(false));
    (out, LARGEST.with(|m| m.get()))
}

// ------------------------------------------------------------ spec

fn configs() -> Vec<Value> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../configs");
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().unwrap() == "catalog.json" {
            continue;
        }
        out.push(serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap());
    }
    out.sort_by_key(|v: &Value| v.to_string());
    out
}

/// Every (path, value) leaf and object of a tree, as JSON paths.
fn paths(v: &Value, at: &str, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                out.push(p.clone());
                paths(x, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                paths(x, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &str) -> Option<&'a mut Value> {
    let mut cur = v;
    for part in path.split('.') {
        let (name, idx) = match part.split_once('[') {
            Some((n, rest)) => (n, rest.trim_end_matches(']').parse::<usize>().ok()),
            None => (part, None),
        };
        cur = cur.get_mut(name)?;
        if let Some(i) = idx {
            cur = cur.get_mut(i)?;
        }
    }
    Some(cur)
}

/// Values that break things: wrong types, extremes, odd strings.
fn nasty() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(json!(null)),
        Just(json!(-1)),
        Just(json!(0)),
        Just(json!(1e30)),
        Just(json!(-1e30)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(0.5)),
        Just(json!("")),
        Just(json!("x\u{0}y")),
        Just(json!("../../etc")),
        Just(json!([1, 2])),
        Just(json!({})),
        Just(json!({"kind": "nonsense"})),
        Just(json!(true)),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "[a-z./ ]{0,12}".prop_map(|s| json!(s)),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Replace(usize, Value),
    Remove(usize),
    AddUnknown(usize, String),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<usize>(), nasty()).prop_map(|(i, v)| Mutation::Replace(i, v)),
        any::<usize>().prop_map(Mutation::Remove),
        (any::<usize>(), "[a-z_]{1,8}").prop_map(|(i, k)| Mutation::AddUnknown(i, k)),
    ]
}

fn apply(tree: &mut Value, m: &Mutation) {
    let mut ps = Vec::new();
    paths(tree, "", &mut ps);
    if ps.is_empty() {
        return;
    }
    match m {
        Mutation::Replace(i, v) => {
            if let Some(x) = get_mut(tree, &ps[i % ps.len()]) {
                *x = v.clone();
            }
        }
        Mutation::Remove(i) => {
            let p = &ps[i % ps.len()];
            let (parent, last) = match p.rsplit_once('.') {
                Some((a, b)) => (get_mut(tree, a), b.to_string()),
                None => (Some(&mut *tree), p.clone()),
            };
            if let Some(Value::Object(o)) = parent {
                o.remove(&last);
            }
        }
        Mutation::AddUnknown(i, k) => {
            let p = &ps[i % ps.len()];
            if let Some(Value::Object(o)) = get_mut(tree, p) {
                o.insert(format!("zz_{k}"), json!(1));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 384, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random mutations of the shipped configs: compiling never panics,
    /// every problem names where it is, and the file path (text) and the
    /// tree path (`--set`, the embedded job) agree.
    #[test]
    fn mutated_specs_never_panic_and_name_their_paths(
        which in 0usize..8,
        muts in proptest::collection::vec(mutation(), 1..4),
    ) {
        let all = configs();
        let mut tree = all[which % all.len()].clone();
        for m in &muts {
            apply(&mut tree, m);
        }
        let direct = compile(tree.clone());
        let text = serde_json::to_string(&tree).unwrap();
        let via_text = parse_text(&text).and_then(compile);
        prop_assert_eq!(direct.is_ok(), via_text.is_ok());
        if let (Err(a), Err(b)) = (&direct, &via_text) {
            let a: Vec<String> = a.issues().iter().map(|i| i.to_string()).collect();
            let b: Vec<String> = b.issues().iter().map(|i| i.to_string()).collect();
            prop_assert_eq!(&a, &b);
            for i in a {
                // "path: message", the path never empty unless the whole
                // document is the problem.
                let (path, msg) = i.split_once(": ").unwrap_or(("", &i));
                prop_assert!(!msg.is_empty(), "{}", i);
                prop_assert!(!path.is_empty() || tree.as_object().is_none(), "no path in {:?} for {}", i, tree);
            }
        }
    }

    /// Random text: parse_text never panics.
    #[test]
    fn random_text_never_panics(text in "\\PC{0,200}") {
        let _ = parse_text(&text).and_then(compile);
    }
}

// ------------------------------------------------------------ wire

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bytes: the decoder never panics, and never allocates more
    /// than what it was given (plus a fixed margin), whatever length a
    /// frame announces.
    #[test]
    fn random_bytes_never_panic_or_allocate_what_was_not_sent(
        bytes in proptest::collection::vec(any::<u8>(), 0..2048),
    ) {
        let (_, largest) = largest_allocation(|| {
            let mut r = std::io::Cursor::new(&bytes);
            for _ in 0..4 {
                if proto::wire::read_frame::<proto::wire::Request>(&mut r).is_err() {
                    break;
                }
            }
        });
        prop_assert!(largest <= 4 * bytes.len() + 64 * 1024, "{} bytes allocated for {} given", largest, bytes.len());
    }

    /// A frame announcing any length with a short body: refused (too
    /// large) or ended (eof), without allocating the announced length.
    #[test]
    fn announced_lengths_are_not_trusted(len in any::<u32>(), body in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut frame = len.to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let (r, largest) = largest_allocation(|| {
            proto::wire::read_frame::<proto::wire::Request>(&mut std::io::Cursor::new(&frame))
        });
        if len as usize > body.len() {
            prop_assert!(r.is_err());
        }
        prop_assert!(largest <= 64 * 1024, "{} bytes allocated for a {}-byte frame announcing {}", largest, frame.len(), len);
    }

    /// Valid requests survive a round trip; mutated ones never panic.
    #[test]
    fn frames_round_trip_and_mutations_never_panic(step in any::<u64>(), loss in proptest::option::of(-1e6f64..1e6), flip in any::<(usize, u8)>()) {
        let req = proto::wire::Request::Heartbeat(proto::wire::Heartbeat { step, loss, ..Default::default() });
        let bytes = proto::wire::encode(&req);
        let back: proto::wire::Request = proto::wire::read_frame(&mut std::io::Cursor::new(&bytes)).unwrap();
        prop_assert_eq!(&back, &req);
        let mut bad = bytes.clone();
        let i = flip.0 % bad.len();
        bad[i] ^= flip.1 | 1;
        let _ = proto::wire::read_frame::<proto::wire::Request>(&mut std::io::Cursor::new(&bad));
    }
}
