//! Slurm's compressed host lists (`SLURM_JOB_NODELIST`), expanded natively
//! so that nothing depends on `scontrol show hostnames`: `gpu[01-04,07],cpu5`
//! is gpu01 gpu02 gpu03 gpu04 gpu07 cpu5. Ranges keep their zero padding;
//! several bracket groups in one name multiply (`r[1-2]n[1-2]` is r1n1 r1n2
//! r2n1 r2n2), as Slurm's own hostlist does.

/// Expand a host list; errors name the offending piece.
pub fn expand(list: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for item in split_top(list)? {
        if item.is_empty() {
            continue;
        }
        out.extend(expand_one(&item)?);
    }
    if out.is_empty() {
        return Err(format!("host list {list:?} names no host"));
    }
    Ok(out)
}

/// Split at commas outside brackets.
fn split_top(list: &str) -> Result<Vec<String>, String> {
    let (mut items, mut cur, mut depth) = (Vec::new(), String::new(), 0i32);
    for c in list.trim().chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut cur));
                continue;
            }
            _ => {}
        }
        if !(0..=1).contains(&depth) {
            return Err(format!("host list {list:?}: unbalanced or nested brackets"));
        }
        cur.push(c);
    }
    if depth != 0 {
        return Err(format!("host list {list:?}: unbalanced brackets"));
    }
    items.push(cur);
    Ok(items)
}

/// One name with zero or more bracket groups.
fn expand_one(item: &str) -> Result<Vec<String>, String> {
    let Some(open) = item.find('[') else {
        return Ok(vec![item.to_string()]);
    };
    let close = item[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or_else(|| format!("{item:?}: '[' without ']'"))?;
    let (prefix, body, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    let tails = expand_one(rest)?;
    let mut out = Vec::new();
    for part in body.split(',') {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let bad = || format!("{item:?}: {part:?} is not a number or a range a-b");
        if lo.is_empty()
            || !lo.bytes().all(|b| b.is_ascii_digit())
            || !hi.bytes().all(|b| b.is_ascii_digit())
            || hi.is_empty()
        {
            return Err(bad());
        }
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| bad())?,
            hi.parse().map_err(|_| bad())?,
        );
        if b < a {
            return Err(format!("{item:?}: range {part:?} runs backwards"));
        }
        if b - a > 100_000 {
            return Err(format!("{item:?}: range {part:?} is too large"));
        }
        let width = lo.len();
        for n in a..=b {
            for t in &tails {
                out.push(format!("{prefix}{n:0width$}{t}"));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::expand;

    #[test]
    fn compressed_lists_expand_like_slurm() {
        let cases: &[(&str, &[&str])] = &[
            ("n1", &["n1"]),
            ("n[1-3]", &["n1", "n2", "n3"]),
            (
                "gpu[01-04,07],cpu5",
                &["gpu01", "gpu02", "gpu03", "gpu04", "gpu07", "cpu5"],
            ),
            ("a[8-10]", &["a8", "a9", "a10"]),
            ("a[008-010]", &["a008", "a009", "a010"]),
            ("r[1-2]n[1-2]", &["r1n1", "r1n2", "r2n1", "r2n2"]),
            ("node-[1,3]-ib", &["node-1-ib", "node-3-ib"]),
            ("x,y[2],z", &["x", "y2", "z"]),
        ];
        for (list, want) in cases {
            assert_eq!(expand(list).unwrap(), *want, "{list}");
        }
    }

    #[test]
    fn malformed_lists_are_errors_naming_the_piece() {
        for (list, want) in [
            ("n[1-3", "unbalanced"),
            ("n1-3]", "unbalanced"),
            ("n[3-1]", "runs backwards"),
            ("n[a-b]", "\"a-b\" is not a number"),
            ("n[1,,2]", "\"\" is not a number"),
            ("n[[1]]", "nested"),
            ("", "names no host"),
        ] {
            let e = expand(list).unwrap_err();
            assert!(e.contains(want), "{list}: {e}");
        }
    }
}
