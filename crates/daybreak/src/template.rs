//! The cloud-config template (`[[[ .key.path ]]]`, AuroraBoot's delimiters) and the one way
//! Daybreak reads a text its settings name: a path or an http(s) URL.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::{anyhow, bail};
use serde_json::{Map, Value};

/// A settings key as the template may write it (`insecure` is `allow-insecure-registries`).
pub fn alias(key: &str) -> &str {
    match key {
        "insecure" => "allow-insecure-registries",
        k => k,
    }
}

/// Fetches text from a path or an http(s) URL; `what` names it in errors.
pub fn read_text(src: &str, what: &str) -> anyhow::Result<String> {
    if artifacts::is_url(src) {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(30)))
            .build()
            .into();
        let mut resp = agent
            .get(src)
            .call()
            .map_err(|e| anyhow!("cannot fetch the {what} from {src}: {e}"))?;
        return resp
            .body_mut()
            .with_config()
            .limit(16 << 20)
            .read_to_string()
            .map_err(|e| anyhow!("cannot read the {what} from {src}: {e}"));
    }
    std::fs::read_to_string(src).map_err(|e| anyhow!("cannot read the {what} {src}: {e}"))
}

/// Renders a cloud-config template: `[[[ .a.b ]]]` is the value at that path of `data` (empty
/// when missing), `[[[-` and `-]]]` trim the whitespace before or after. Returns the text and
/// the top-level keys the template used.
pub fn render(tpl: &str, data: &Map<String, Value>) -> anyhow::Result<(String, HashSet<String>)> {
    let mut out = String::with_capacity(tpl.len());
    let mut used = HashSet::new();
    let mut rest = tpl;
    while let Some(start) = rest.find("[[[") {
        let line = tpl[..tpl.len() - rest.len() + start].lines().count().max(1);
        let mut before = &rest[..start];
        let after_open = &rest[start + 3..];
        let Some(end) = after_open.find("]]]") else {
            bail!("cloud-config line {line}: \"[[[\" is never closed by \"]]]\"");
        };
        let mut expr = &after_open[..end];
        let mut next = &after_open[end + 3..];
        if let Some(e) = expr.strip_prefix('-') {
            expr = e;
            before = before.trim_end();
        }
        if let Some(e) = expr.strip_suffix('-') {
            expr = e;
            next = next.trim_start();
        }
        out.push_str(before);
        let expr = expr.trim();
        let path = expr
            .strip_prefix('.')
            .filter(|p| {
                !p.is_empty()
                    && p.split('.').all(|c| {
                        !c.is_empty()
                            && c.chars()
                                .all(|ch| ch.is_alphanumeric() || ch == '_' || ch == '-')
                    })
            })
            .ok_or_else(|| {
                anyhow!(
                    "cloud-config line {line}: [[[ {expr} ]]] is not supported; Daybreak fills in \
                     [[[ .key ]]] and [[[ .key.sub ]]] with --set values"
                )
            })?;
        let parts: Vec<&str> = path.split('.').collect();
        used.insert(alias(parts[0]).to_string());
        let mut cur: Option<&Value> = data.get(alias(parts[0]));
        for p in &parts[1..] {
            cur = cur.and_then(|v| v.get(*p));
        }
        match cur {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) => out.push_str(s),
            Some(v) => out.push_str(&v.to_string()),
        }
        rest = next;
    }
    out.push_str(rest);
    Ok((out, used))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set_path(root: &mut Map<String, Value>, path: &[String], v: Value) {
        let (last, parents) = path.split_last().unwrap();
        let mut cur = root;
        for p in parents {
            cur = cur
                .entry(p.clone())
                .or_insert_with(|| Value::Object(Map::new()))
                .as_object_mut()
                .unwrap();
        }
        cur.insert(last.clone(), v);
    }

    #[test]
    fn templates_fill_in_and_trim() {
        let mut data = Map::new();
        set_path(
            &mut data,
            &["kairos".into(), "password".into()],
            Value::String("s3cret".into()),
        );
        let (out, used) = render(
            "#cloud-config\nusers:\n- name: kairos\n  passwd: [[[.kairos.password]]]\n  x: \"[[[ .missing.key ]]]\"\n  y: [[[- .kairos.password -]]] !\n",
            &data,
        )
        .unwrap();
        assert!(
            out.contains("passwd: s3cret\n")
                && out.contains("x: \"\"")
                && out.contains("y:s3cret!"),
            "{out}"
        );
        assert!(used.contains("kairos") && used.contains("missing"));
        assert!(render("a [[[ .x", &data)
            .unwrap_err()
            .to_string()
            .contains("never closed"));
        assert!(render("[[[ range .x ]]]", &data)
            .unwrap_err()
            .to_string()
            .contains("not supported"));
    }
}
