//! Minimal SVG line charts (loss curves, gradient-norm profiles), written without a plotting
//! dependency so `seqflow train` can always draw its curves.

use std::fmt::Write;

/// One named polyline.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// `(x, y)` in drawing order; non-finite points (and, on a log scale, y <= 0) are dropped.
    pub points: Vec<(f64, f64)>,
}

const COLORS: [&str; 8] = [
    "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
];

/// A 720x420 SVG chart; `log_y` plots log10 of positive values (others are dropped).
pub fn line_chart(title: &str, x_label: &str, y_label: &str, series: &[Series], log_y: bool) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 420.0, 70.0, 170.0, 40.0, 50.0);
    let ty = |y: f64| if log_y { y.log10() } else { y };
    let pts: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite() && (!log_y || p.1 > 0.0))
                .map(|&(x, y)| (x, ty(y)))
                .collect()
        })
        .collect();
    let all = pts.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) =
        (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    if x1 <= x0 {
        x1 = x0 + 1.0;
    }
    if y1 <= y0 {
        y1 = y0 + 1.0;
    }
    let pad = (y1 - y0) * 0.05;
    let (y0, y1) = (y0 - pad, y1 + pad);
    let px = |x: f64| ml + (x - x0) / (x1 - x0) * (w - ml - mr);
    let py = |y: f64| mt + (1.0 - (y - y0) / (y1 - y0)) * (h - mt - mb);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="22" font-size="15" text-anchor="middle">{}</text>"#,
        (w - mr + ml) / 2.0,
        esc(title)
    );
    let _ = writeln!(
        s,
        r##"<rect x="{ml}" y="{mt}" width="{}" height="{}" fill="none" stroke="#888"/>"##,
        w - ml - mr,
        h - mt - mb
    );
    for k in 0..=5 {
        let fx = x0 + (x1 - x0) * k as f64 / 5.0;
        let fy = y0 + (y1 - y0) * k as f64 / 5.0;
        let ylab = if log_y {
            format!("1e{fy:.1}")
        } else {
            format!("{fy:.4}")
        };
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
            px(fx),
            h - mb + 16.0,
            trim(fx)
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}" text-anchor="end">{ylab}</text>"#,
            ml - 4.0,
            py(fy) + 4.0
        );
        let _ = writeln!(
            s,
            r##"<line x1="{ml}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            w - mr,
            py(fy),
            py(fy)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="middle">{}</text>"#,
        (w - mr + ml) / 2.0,
        h - 12.0,
        esc(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">{}{}</text>"#,
        (h - mb + mt) / 2.0,
        (h - mb + mt) / 2.0,
        esc(y_label),
        if log_y { " (log scale)" } else { "" }
    );
    for (i, (ser, p)) in series.iter().zip(&pts).enumerate() {
        let color = COLORS[i % COLORS.len()];
        let path: Vec<String> = p
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", px(x), py(y)))
            .collect();
        if path.len() > 1 {
            let _ = writeln!(
                s,
                r##"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"##,
                path.join(" ")
            );
        } else if let Some(&(x, y)) = p.first() {
            let _ = writeln!(
                s,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                px(x),
                py(y)
            );
        }
        let ly = mt + 14.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{}" x2="{}" y1="{ly}" y2="{ly}" stroke="{color}" stroke-width="3"/>"#,
            w - mr + 10.0,
            w - mr + 30.0
        );
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{}">{}</text>"#,
            w - mr + 36.0,
            ly + 4.0,
            esc(&ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

fn trim(v: f64) -> String {
    if (v - v.round()).abs() < 1e-9 {
        format!("{}", v.round() as i64)
    } else {
        format!("{v:.2}")
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}
