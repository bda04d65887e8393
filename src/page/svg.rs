//! Inline SVG sparklines for the status page: no external assets, no script.

use std::fmt::Write;

use super::html::esc;

/// Width of a sparkline, in CSS pixels.
pub const WIDTH: f64 = 160.0;
/// Height of a sparkline, in CSS pixels.
pub const HEIGHT: f64 = 28.0;

/// A sparkline of `values` (oldest first) from 0 to their maximum, with the latest value
/// marked. `label` becomes the accessible name and tooltip. Fewer than two values give a
/// short text instead of a chart. Non-finite values count as 0.
pub fn sparkline(values: &[f64], label: &str, color: &str) -> String {
    if values.len() < 2 {
        return "<span class=\"muted\">collecting…</span>".to_string();
    }
    let v: Vec<f64> = values
        .iter()
        .map(|x| if x.is_finite() { x.max(0.0) } else { 0.0 })
        .collect();
    let max = v.iter().copied().fold(0.0_f64, f64::max);
    let top = if max > 0.0 { max } else { 1.0 };
    let (pad, w, h) = (2.0, WIDTH, HEIGHT);
    let step = (w - 2.0 * pad) / (v.len() - 1) as f64;
    let pts: Vec<(f64, f64)> = v
        .iter()
        .enumerate()
        .map(|(i, x)| (pad + step * i as f64, h - pad - x / top * (h - 2.0 * pad)))
        .collect();
    let mut line = String::with_capacity(pts.len() * 12);
    for (i, (x, y)) in pts.iter().enumerate() {
        let _ = write!(line, "{}{x:.1},{y:.1}", if i == 0 { "" } else { " " });
    }
    let (lx, ly) = pts.last().copied().unwrap_or((pad, h - pad));
    let (fx, _) = pts.first().copied().unwrap_or((pad, h - pad));
    let base = h - pad;
    let color = esc(color);
    let label = esc(label);
    format!(
        "<svg class=\"spark\" xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" viewBox=\"0 0 {w} {h}\" preserveAspectRatio=\"none\" role=\"img\" aria-label=\"{label}\">\
<title>{label}</title>\
<polygon points=\"{fx:.1},{base:.1} {line} {lx:.1},{base:.1}\" fill=\"{color}\" fill-opacity=\"0.15\" stroke=\"none\"/>\
<polyline points=\"{line}\" fill=\"none\" stroke=\"{color}\" stroke-width=\"1.5\" stroke-linejoin=\"round\"/>\
<circle cx=\"{lx:.1}\" cy=\"{ly:.1}\" r=\"2.5\" fill=\"{color}\"/></svg>"
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A small well-formedness check for the SVG this module writes: tags balance, every
    /// attribute is quoted, no text outside `<title>` holds `<` or `&` unescaped.
    pub(crate) fn well_formed(xml: &str) -> Result<Vec<String>, String> {
        let mut stack: Vec<String> = Vec::new();
        let mut seen = Vec::new();
        let mut rest = xml;
        while let Some(start) = rest.find('<') {
            let text = &rest[..start];
            if text.contains('>') {
                return Err(format!("stray > in text {text:?}"));
            }
            if text.contains('&') && !text.contains("&amp;") && !text.contains("&lt;") {
                return Err(format!("unescaped & in {text:?}"));
            }
            let end = rest[start..].find('>').ok_or("unclosed tag")? + start;
            let tag = &rest[start + 1..end];
            rest = &rest[end + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name = body.split_whitespace().next().ok_or("empty tag")?;
            // attributes: name="value" pairs
            let mut attrs = body[name.len()..].trim();
            while !attrs.is_empty() {
                let eq = attrs
                    .find("=\"")
                    .ok_or(format!("unquoted attribute in <{tag}>"))?;
                let close = attrs[eq + 2..]
                    .find('"')
                    .ok_or(format!("unterminated attribute in <{tag}>"))?;
                let value = &attrs[eq + 2..eq + 2 + close];
                if value.contains('<') {
                    return Err(format!("< in attribute of <{tag}>"));
                }
                attrs = attrs[eq + 2 + close + 1..].trim();
            }
            seen.push(name.to_string());
            if !self_closing {
                stack.push(name.to_string());
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        Ok(seen)
    }

    fn points(svg: &str, attr_of: &str) -> Vec<(f64, f64)> {
        let i = svg.find(&format!("<{attr_of} points=\"")).unwrap();
        let s = &svg[i + attr_of.len() + 10..];
        let s = &s[..s.find('"').unwrap()];
        s.split(' ')
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    #[test]
    fn sparkline_is_well_formed_and_scaled() {
        let s = sparkline(&[0.0, 1.0, 4.0, f64::NAN, 2.0], "lag <\"x\"> & y", "#c00");
        let tags = well_formed(&s).unwrap_or_else(|e| panic!("{e}: {s}"));
        assert_eq!(tags, ["svg", "title", "polygon", "polyline", "circle"]);
        assert!(s.contains("lag &lt;&quot;x&quot;&gt; &amp; y"), "{s}");
        let p = points(&s, "polyline");
        assert_eq!(p.len(), 5);
        for (x, y) in &p {
            assert!(
                (0.0..=WIDTH).contains(x) && (0.0..=HEIGHT).contains(y),
                "{s}"
            );
        }
        // the maximum touches the top, zero and NaN the base line
        assert_eq!(p[2].1, 2.0);
        assert_eq!(p[0].1, HEIGHT - 2.0);
        assert_eq!(p[3].1, HEIGHT - 2.0);
        assert_eq!(p[0].0, 2.0);
        assert_eq!(p[4].0, WIDTH - 2.0);
    }

    #[test]
    fn flat_and_short_series() {
        let flat = sparkline(&[0.0; 120], "idle", "green");
        assert!(well_formed(&flat).is_ok());
        assert!(!flat.contains("NaN") && !flat.contains("inf"), "{flat}");
        assert!(!sparkline(&[1.0], "x", "red").contains("<svg"));
        let huge = sparkline(&[f64::MAX, f64::INFINITY, 1e300], "x", "red");
        assert!(well_formed(&huge).is_ok());
        assert!(!huge.contains("NaN"), "{huge}");
    }
}
