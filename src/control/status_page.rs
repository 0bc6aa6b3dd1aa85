//! The human `/status` page: self-contained HTML that refreshes itself.

use serde_json::Value;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Render the `/status` JSON as a page.
pub(crate) fn render(v: &Value) -> String {
    let mut h = String::with_capacity(8192);
    h.push_str("<!doctype html><html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"2\">");
    h.push_str("<title>geolb status</title><style>body{font:14px system-ui,sans-serif;margin:2em;color:#222}");
    h.push_str("table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}");
    h.push_str(".healthy{background:#d9f7d9}.spilling{background:#fff2c4}.recovering{background:#dbe9ff}.down{background:#ffd6d6}</style></head><body>");
    h.push_str(&format!(
        "<h1>geolb</h1><p>config generation {} · last reload: {} {}</p>",
        v["generation"],
        esc(v["reload"]["last_result"].as_str().unwrap_or("-")),
        esc(v["reload"]["last_error"].as_str().unwrap_or(""))
    ));
    h.push_str(&format!(
        "<p>geo database: {}</p>",
        esc(v["geo"]["source"].as_str().unwrap_or("-"))
    ));
    for svc in v["services"].as_array().into_iter().flatten() {
        h.push_str(&format!("<h2>service {}</h2><table><tr><th>region</th><th>state</th><th>health</th><th>traffic share</th><th>backends</th></tr>", esc(svc["service"].as_str().unwrap_or(""))));
        for r in svc["regions"].as_array().into_iter().flatten() {
            let state = r["state"].as_str().unwrap_or("");
            let mut bes = String::new();
            for b in r["backends"].as_array().into_iter().flatten() {
                let st = if b["available"].as_bool() == Some(true) {
                    "up"
                } else if b["ejected"].as_bool() == Some(true) {
                    "ejected"
                } else {
                    "down"
                };
                bes.push_str(&format!(
                    "{} <b>{st}</b><br>",
                    esc(b["backend"].as_str().unwrap_or(""))
                ));
            }
            h.push_str(&format!(
                "<tr class=\"{}\"><td>{}</td><td>{}</td><td>{:.0}%</td><td>{:.1}%</td><td>{bes}</td></tr>",
                esc(state),
                esc(r["region"].as_str().unwrap_or("")),
                esc(state),
                r["health"].as_f64().unwrap_or(0.0) * 100.0,
                r["traffic_share"].as_f64().unwrap_or(0.0) * 100.0,
            ));
        }
        h.push_str("</table>");
    }
    h.push_str("<h2>recent state changes</h2><ul>");
    for e in v["events"].as_array().into_iter().flatten().take(30) {
        let t = e["time"].as_f64().unwrap_or(0.0) as u64 % 86_400;
        h.push_str(&format!(
            "<li>{:02}:{:02}:{:02} UTC: {}</li>",
            t / 3600,
            t / 60 % 60,
            t % 60,
            esc(e["text"].as_str().unwrap_or(""))
        ));
    }
    h.push_str("</ul></body></html>");
    h
}
