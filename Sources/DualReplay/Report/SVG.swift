// Inline SVG charts for the HTML report: no script, no external font or image; tooltips are SVG
// `<title>` elements. Every number is formatted with a fixed number of decimals, so the same
// input gives the same bytes.
import Foundation

/// Text for HTML and SVG: unsafe characters shown as escapes (`DisplayText`), then `& < > " '`
/// as entities.
func xmlEscaped(_ s: String) -> String {
    var out = ""
    for ch in DisplayText.escaped(s) {
        switch ch {
        case "&": out += "&amp;"
        case "<": out += "&lt;"
        case ">": out += "&gt;"
        case "\"": out += "&quot;"
        case "'": out += "&#39;"
        default: out.append(ch)
        }
    }
    return out
}

/// Several lines of text, each `xmlEscaped`, joined by `separator` (a line break is not unsafe here).
func xmlEscapedLines(_ s: String, separator: String = "\n") -> String {
    s.split(separator: "\n", omittingEmptySubsequences: false).map { xmlEscaped(String($0)) }.joined(separator: separator)
}

/// `v` with `decimals` decimals ("-" when not finite; never "-0.0").
func fixed(_ v: Double, _ decimals: Int = 1) -> String {
    guard v.isFinite else { return "-" }
    let s = String(format: "%.\(decimals)f", v)
    return s.hasPrefix("-") && s.dropFirst().allSatisfy({ $0 == "0" || $0 == "." }) ? String(s.dropFirst()) : s
}

/// Coordinates in SVG user units, two decimals.
private func c(_ v: Double) -> String { fixed(v, 2) }

/// The colours of series and domains (Tableau 10 without its red, which marks red lines).
let seriesColors = ["#4e79a7", "#f28e2b", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac", "#86bcb6"]
let redLineColor = "#d62728"
func seriesColor(_ i: Int) -> String { seriesColors[i % seriesColors.count] }

/// An SVG picture being drawn: elements are appended in order.
struct SVGCanvas {
    let width: Double, height: Double
    private(set) var body = ""

    init(width: Double, height: Double) {
        self.width = width
        self.height = height
    }

    private func titled(_ tag: String, _ attributes: String, _ title: String?) -> String {
        guard let title else { return "<\(tag) \(attributes)/>" }
        return "<\(tag) \(attributes)><title>\(xmlEscaped(title))</title></\(tag)>"
    }

    mutating func rect(_ x: Double, _ y: Double, _ w: Double, _ h: Double, fill: String, stroke: String? = nil, title: String? = nil) {
        let s = stroke.map { " stroke=\"\($0)\"" } ?? ""
        body += titled("rect", "x=\"\(c(x))\" y=\"\(c(y))\" width=\"\(c(max(0, w)))\" height=\"\(c(max(0, h)))\" fill=\"\(fill)\"\(s)", title)
    }

    mutating func line(_ x1: Double, _ y1: Double, _ x2: Double, _ y2: Double, stroke: String, width: Double = 1,
                       dash: String? = nil, title: String? = nil) {
        let d = dash.map { " stroke-dasharray=\"\($0)\"" } ?? ""
        body += titled("line", "x1=\"\(c(x1))\" y1=\"\(c(y1))\" x2=\"\(c(x2))\" y2=\"\(c(y2))\" stroke=\"\(stroke)\" stroke-width=\"\(c(width))\"\(d)", title)
    }

    mutating func polyline(_ points: [(Double, Double)], stroke: String, width: Double = 2, dash: String? = nil, title: String? = nil) {
        guard !points.isEmpty else { return }
        let p = points.map { "\(c($0.0)),\(c($0.1))" }.joined(separator: " ")
        let d = dash.map { " stroke-dasharray=\"\($0)\"" } ?? ""
        body += titled("polyline", "points=\"\(p)\" fill=\"none\" stroke=\"\(stroke)\" stroke-width=\"\(c(width))\"\(d)", title)
    }

    mutating func polygon(_ points: [(Double, Double)], fill: String, title: String? = nil) {
        guard !points.isEmpty else { return }
        let p = points.map { "\(c($0.0)),\(c($0.1))" }.joined(separator: " ")
        body += titled("polygon", "points=\"\(p)\" fill=\"\(fill)\" fill-opacity=\"0.85\"", title)
    }

    mutating func circle(_ x: Double, _ y: Double, r: Double, fill: String, title: String? = nil) {
        body += titled("circle", "cx=\"\(c(x))\" cy=\"\(c(y))\" r=\"\(c(r))\" fill=\"\(fill)\"", title)
    }

    enum Anchor: String { case start, middle, end }

    mutating func text(_ x: Double, _ y: Double, _ s: String, anchor: Anchor = .start, size: Double = 11, fill: String = "#222",
                       className: String? = nil, data: [(String, String)] = [], rotate: Bool = false) {
        let cls = className.map { " class=\"\($0)\"" } ?? ""
        let extra = data.map { " data-\($0.0)=\"\(xmlEscaped($0.1))\"" }.joined()
        let r = rotate ? " transform=\"rotate(-90 \(c(x)) \(c(y)))\"" : ""
        body += "<text x=\"\(c(x))\" y=\"\(c(y))\" font-size=\"\(c(size))\" text-anchor=\"\(anchor.rawValue)\" fill=\"\(fill)\"\(cls)\(extra)\(r)>\(xmlEscaped(s))</text>"
    }

    /// The finished `<svg>`; `label` is its accessible name.
    func svg(label: String) -> String {
        "<svg viewBox=\"0 0 \(c(width)) \(c(height))\" width=\"\(c(width))\" height=\"\(c(height))\" role=\"img\" aria-label=\"\(xmlEscaped(label))\">"
            + "<rect x=\"0\" y=\"0\" width=\"\(c(width))\" height=\"\(c(height))\" fill=\"#ffffff\"/>" + body + "</svg>"
    }
}

// MARK: - Charts

/// A line of a line chart: y per x position (nil: no point there).
struct ChartSeries {
    var name: String
    var color: String
    var values: [Double?]
    var width: Double = 2
    var dash: String? = nil
}

/// A red line: a horizontal threshold, labelled.
struct Threshold {
    var value: Double
    var label: String
}

/// The plot area of a chart with a y axis (ticks, grid) and categorical x positions.
struct PlotFrame {
    let left = 56.0, top = 28.0
    let plotWidth: Double, plotHeight: Double
    let yMin: Double, yMax: Double
    let count: Int

    func x(_ i: Int) -> Double { count <= 1 ? left + plotWidth / 2 : left + plotWidth * Double(i) / Double(count - 1) }
    func y(_ v: Double) -> Double { top + plotHeight * (1 - (min(max(v, yMin), yMax) - yMin) / max(yMax - yMin, 1e-12)) }

    /// Axes, horizontal grid lines at `ticks` values, x labels under each position.
    func drawAxes(_ svg: inout SVGCanvas, xLabels: [String], yTitle: String, ticks: [Double], tickFormat: (Double) -> String) {
        for t in ticks {
            svg.line(left, y(t), left + plotWidth, y(t), stroke: "#e3e3e3")
            svg.text(left - 6, y(t) + 4, tickFormat(t), anchor: .end, size: 10, fill: "#555")
        }
        svg.line(left, top, left, top + plotHeight, stroke: "#888")
        svg.line(left, top + plotHeight, left + plotWidth, top + plotHeight, stroke: "#888")
        for (i, label) in xLabels.enumerated() {
            svg.text(x(i), top + plotHeight + 14, shortened(label, 14), anchor: .middle, size: 10, fill: "#555")
        }
        svg.text(14, top + plotHeight / 2, yTitle, anchor: .middle, size: 10, fill: "#555", rotate: true)
    }
}

/// `s` cut to `n` characters with an ellipsis.
func shortened(_ s: String, _ n: Int) -> String { s.count <= n ? s : String(s.prefix(n - 1)) + "…" }

/// Round tick values covering lo...hi (about five).
func niceTicks(_ lo: Double, _ hi: Double, count: Int = 5) -> [Double] {
    guard hi > lo else { return [lo] }
    let raw = (hi - lo) / Double(count)
    let mag = pow(10, floor(log10(raw)))
    let step = [1.0, 2, 2.5, 5, 10].map { $0 * mag }.first { $0 >= raw } ?? raw
    var out: [Double] = []
    var t = ceil(lo / step) * step
    while t <= hi + step * 1e-9 { out.append(abs(t) < step * 1e-9 ? 0 : t); t += step }
    return out
}

/// A line chart over categorical x positions with a legend and red lines; `format` writes the
/// values in tooltips.
func lineChart(xLabels: [String], series: [ChartSeries], yRange: ClosedRange<Double>, yTitle: String, thresholds: [Threshold] = [],
               label: String, format: (Double) -> String = { fixed($0) }, width: Double = 560, height: Double = 260) -> String {
    var svg = SVGCanvas(width: width, height: height + Double((series.count + 2) / 3) * 16)
    let f = PlotFrame(plotWidth: width - 110, plotHeight: height - 70, yMin: yRange.lowerBound, yMax: yRange.upperBound, count: xLabels.count)
    f.drawAxes(&svg, xLabels: xLabels, yTitle: yTitle, ticks: niceTicks(yRange.lowerBound, yRange.upperBound), tickFormat: { fixed($0, 0) })
    for t in thresholds {
        svg.line(f.left, f.y(t.value), f.left + f.plotWidth, f.y(t.value), stroke: redLineColor, width: 1.5, dash: "6 3", title: t.label)
        svg.text(f.left + f.plotWidth, f.y(t.value) - 4, t.label, anchor: .end, size: 10, fill: redLineColor)
    }
    for s in series {
        // a polyline per run of consecutive defined points
        var run: [(Double, Double)] = []
        func flush() { if run.count > 1 { svg.polyline(run, stroke: s.color, width: s.width, dash: s.dash, title: s.name) }; run = [] }
        for (i, v) in s.values.enumerated() {
            if let v, v.isFinite { run.append((f.x(i), f.y(v))) } else { flush() }
        }
        flush()
        for (i, v) in s.values.enumerated() {
            guard let v, v.isFinite else { continue }
            svg.circle(f.x(i), f.y(v), r: 3, fill: s.color, title: "\(s.name) after \(xLabels[i]): \(format(v))")
        }
    }
    legend(&svg, series.map { ($0.name, $0.color) }, top: height - 14, width: width)
    return svg.svg(label: label)
}

/// Legend entries in rows of three under a chart.
func legend(_ svg: inout SVGCanvas, _ entries: [(String, String)], top: Double, width: Double) {
    let col = (width - 60) / 3
    for (i, e) in entries.enumerated() {
        let x = 56 + col * Double(i % 3), y = top + Double(i / 3) * 16
        svg.rect(x, y - 9, 10, 10, fill: e.1)
        svg.text(x + 14, y, shortened(e.0, 34), size: 10)
    }
}

/// Grouped bars: one group per category, one bar per series; nil values leave a gap.
func barChart(categories: [String], series: [ChartSeries], yRange: ClosedRange<Double>, yTitle: String, thresholds: [Threshold] = [],
              label: String, format: (Double) -> String = { fixed($0) }, width: Double = 560, height: Double = 260) -> String {
    var svg = SVGCanvas(width: width, height: height + Double((series.count + 2) / 3) * 16)
    let f = PlotFrame(plotWidth: width - 110, plotHeight: height - 70, yMin: yRange.lowerBound, yMax: yRange.upperBound, count: categories.count)
    let ticks = niceTicks(yRange.lowerBound, yRange.upperBound)
    for t in ticks {
        svg.line(f.left, f.y(t), f.left + f.plotWidth, f.y(t), stroke: "#e3e3e3")
        svg.text(f.left - 6, f.y(t) + 4, fixed(t, 0), anchor: .end, size: 10, fill: "#555")
    }
    svg.line(f.left, f.top, f.left, f.top + f.plotHeight, stroke: "#888")
    svg.text(14, f.top + f.plotHeight / 2, yTitle, anchor: .middle, size: 10, fill: "#555", rotate: true)
    let groupWidth = f.plotWidth / Double(max(categories.count, 1))
    let barWidth = groupWidth * 0.8 / Double(max(series.count, 1))
    let zero = f.y(max(min(0, yRange.upperBound), yRange.lowerBound))
    for (g, name) in categories.enumerated() {
        let gx = f.left + groupWidth * Double(g) + groupWidth * 0.1
        for (k, s) in series.enumerated() {
            guard g < s.values.count, let v = s.values[g], v.isFinite else { continue }
            let y = f.y(v)
            svg.rect(gx + barWidth * Double(k), min(y, zero), barWidth * 0.92, abs(zero - y), fill: s.color,
                     title: "\(s.name), \(name): \(format(v))")
        }
        svg.text(f.left + groupWidth * (Double(g) + 0.5), f.top + f.plotHeight + 14, shortened(name, max(4, Int(groupWidth / 6))),
                 anchor: .middle, size: 10, fill: "#555")
    }
    svg.line(f.left, zero, f.left + f.plotWidth, zero, stroke: "#888")
    for t in thresholds {
        svg.line(f.left, f.y(t.value), f.left + f.plotWidth, f.y(t.value), stroke: redLineColor, width: 1.5, dash: "6 3", title: t.label)
        svg.text(f.left + f.plotWidth, f.y(t.value) - 4, t.label, anchor: .end, size: 10, fill: redLineColor)
    }
    legend(&svg, series.map { ($0.name, $0.color) }, top: height - 14, width: width)
    return svg.svg(label: label)
}

/// A matrix of cells with the value written in each (`cellText`; nil: an empty cell). The colour
/// follows `shade` (0...1). Cell texts carry `data-row` and `data-col` (0-based) for checks.
func heatmap(rows: [String], columns: [String], rowTitle: String, columnTitle: String, label: String,
             cellText: (Int, Int) -> String?, shade: (Int, Int) -> Double?, tooltip: (Int, Int) -> String) -> String {
    let n = max(rows.count, columns.count)
    let cell = max(16.0, min(44.0, 440.0 / Double(max(n, 1))))
    let left = 110.0, top = 30.0
    var svg = SVGCanvas(width: left + cell * Double(columns.count) + 20, height: top + cell * Double(rows.count) + 100)
    for (j, name) in columns.enumerated() {
        let x = left + cell * (Double(j) + 0.5), y = top + cell * Double(rows.count) + 8
        svg.text(x, y, shortened(name, 16), anchor: .end, size: min(10, cell * 0.45), fill: "#555", rotate: true)
    }
    svg.text(left + cell * Double(columns.count) / 2, top - 12, columnTitle, anchor: .middle, size: 10, fill: "#555")
    svg.text(12, top + cell * Double(rows.count) / 2, rowTitle, anchor: .middle, size: 10, fill: "#555", rotate: true)
    for (i, name) in rows.enumerated() {
        svg.text(left - 6, top + cell * (Double(i) + 0.5) + 4, shortened(name, 16), anchor: .end, size: min(10, cell * 0.45), fill: "#555")
        for j in columns.indices {
            let x = left + cell * Double(j), y = top + cell * Double(i)
            guard let s = shade(i, j), s.isFinite else {
                svg.rect(x, y, cell, cell, fill: "#f7f7f7", stroke: "#ffffff")
                continue
            }
            let t = min(max(s, 0), 1)
            svg.rect(x, y, cell, cell, fill: shadeColor(t), stroke: "#ffffff", title: tooltip(i, j))
            if let text = cellText(i, j) {
                svg.text(x + cell / 2, y + cell / 2 + cell * 0.11, text, anchor: .middle, size: cell * 0.3,
                         fill: t > 0.55 ? "#ffffff" : "#111111", className: "cell", data: [("row", "\(i)"), ("col", "\(j)")])
            }
        }
    }
    return svg.svg(label: label)
}

/// White (0) to dark blue (1).
func shadeColor(_ t: Double) -> String {
    let from = (247.0, 251.0, 255.0), to = (8.0, 48.0, 107.0)
    func mix(_ a: Double, _ b: Double) -> Int { Int((a + (b - a) * t).rounded()) }
    return String(format: "#%02x%02x%02x", mix(from.0, to.0), mix(from.1, to.1), mix(from.2, to.2))
}

/// A stacked area (one layer per series, stacked in order) with an optional budget line and,
/// per layer and position, a dashed floor mark drawn at the layer's base plus its floor.
func stackedArea(xLabels: [String], layers: [ChartSeries], floors: [[Double?]], budget: Double?, yTitle: String, label: String,
                 format: (Double) -> String, width: Double = 560, height: Double = 280) -> String {
    var svg = SVGCanvas(width: width, height: height + Double((layers.count + 2) / 3) * 16)
    var totals = [Double](repeating: 0, count: xLabels.count)
    for l in layers { for (i, v) in l.values.enumerated() where i < totals.count { totals[i] += v ?? 0 } }
    let yMax = max(budget ?? 0, totals.max() ?? 0, 1) * 1.05
    let f = PlotFrame(plotWidth: width - 110, plotHeight: height - 70, yMin: 0, yMax: yMax, count: xLabels.count)
    f.drawAxes(&svg, xLabels: xLabels, yTitle: yTitle, ticks: niceTicks(0, yMax), tickFormat: format)
    var base = [Double](repeating: 0, count: xLabels.count)
    for (k, l) in layers.enumerated() {
        let topValues = xLabels.indices.map { base[$0] + (l.values.indices.contains($0) ? l.values[$0] ?? 0 : 0) }
        let upper = xLabels.indices.map { (f.x($0), f.y(topValues[$0])) }
        let lower = xLabels.indices.reversed().map { (f.x($0), f.y(base[$0])) }
        let values = xLabels.indices.map { i in "\(xLabels[i]): \(format(l.values.indices.contains(i) ? l.values[i] ?? 0 : 0))" }
        svg.polygon(upper + lower, fill: l.color, title: "\(l.name) — " + values.joined(separator: "; "))
        if k < floors.count {
            for (i, fl) in floors[k].enumerated() where i < xLabels.count {
                guard let fl else { continue }
                let y = f.y(base[i] + fl), half = f.plotWidth / Double(max(xLabels.count, 2)) * 0.35
                svg.line(f.x(i) - half, y, f.x(i) + half, y, stroke: "#222", width: 1.5, dash: "3 2",
                         title: "\(l.name) floor after \(xLabels[i]): \(format(fl))")
            }
        }
        base = topValues
    }
    if let budget {
        svg.line(f.left, f.y(budget), f.left + f.plotWidth, f.y(budget), stroke: redLineColor, width: 1.5, dash: "6 3", title: "byte budget \(format(budget))")
        svg.text(f.left + f.plotWidth, f.y(budget) - 4, "budget", anchor: .end, size: 10, fill: redLineColor)
    }
    legend(&svg, layers.map { ($0.name, $0.color) }, top: height - 14, width: width)
    return svg.svg(label: label)
}
