import Foundation
import Testing
@testable import DualReplay

private func close(_ a: Double, _ b: Double, _ tol: Double = 1e-12) -> Bool { abs(a - b) <= tol * max(1, abs(a), abs(b)) }

/// Gaussian clusters: class c is mean_c + N(0, I) in `dim` dimensions, mean_c ~ N(0, spread² I).
private struct Clusters {
    var dim: Int
    var classes: Int
    var means: [[Float]]
    var trainX: [Float] = [], trainY: [Int32] = []
    var testX: [Float] = [], testY: [Int32] = []

    init(classes: Int, dim: Int, trainPerClass: Int, testPerClass: Int, spread: Float = 1, seed: UInt64) {
        var rng = SplitMix64(seed: seed)
        self.dim = dim
        self.classes = classes
        means = (0..<classes).map { _ in (0..<dim).map { _ in spread * rng.nextGaussian() } }
        for (count, isTrain) in [(trainPerClass, true), (testPerClass, false)] {
            for i in 0..<(count * classes) {
                let c = i % classes  // classes interleaved, so the row order carries no signal
                let row = means[c].map { $0 + rng.nextGaussian() }
                if isTrain { trainX += row; trainY.append(Int32(c)) } else { testX += row; testY.append(Int32(c)) }
            }
        }
    }

    /// Applies `f` to every row, train and test.
    func mapRows(_ f: ([Float]) -> [Float]) -> Clusters {
        var out = self
        out.trainX = stride(from: 0, to: trainX.count, by: dim).flatMap { f(Array(trainX[$0..<$0 + dim])) }
        out.testX = stride(from: 0, to: testX.count, by: dim).flatMap { f(Array(testX[$0..<$0 + dim])) }
        return out
    }

    func probeF1(_ config: LinearProbeConfig = LinearProbeConfig()) -> Double {
        LinearProbe.fitAndScore(trainFeatures: trainX, trainLabels: trainY, testFeatures: testX, testLabels: testY,
                                dim: dim, classes: classes, config: config)
    }
}

/// Orthonormal rows by Gram-Schmidt (in Double) of the given vectors; near-dependent ones dropped.
private func orthonormalise(_ vectors: [[Float]]) -> [[Double]] {
    var basis: [[Double]] = []
    for v in vectors {
        var u = v.map(Double.init)
        for b in basis {
            let dot = zip(u, b).reduce(0) { $0 + $1.0 * $1.1 }
            u = zip(u, b).map { $0 - dot * $1 }
        }
        let norm = u.reduce(0) { $0 + $1 * $1 }.squareRoot()
        if norm > 1e-6 { basis.append(u.map { $0 / norm }) }
    }
    return basis
}

private func macroF1Of(_ probe: LinearProbe, _ data: Clusters) -> Double {
    macroF1(predictions: probe.predict(features: data.testX), labels: data.testY, classes: (0..<Int32(data.classes)).map { $0 })
}

@Suite("DiagnosticsTests")
struct DiagnosticsTests {
    // MARK: linear probe

    @Test func probeSeparatesClustersAndIsChanceOnShuffledLabels() {
        let data = Clusters(classes: 4, dim: 32, trainPerClass: 50, testPerClass: 50, seed: 1)
        let f1 = data.probeF1()
        #expect(f1 > 0.95, "separable clusters: probe F1 \(f1)")

        // The same features with the labels shuffled carry no information about them.
        var shuffled = data
        var rng = SplitMix64(seed: 7)
        shuffled.trainY.shuffle(using: &rng)
        shuffled.testY.shuffle(using: &rng)
        let chance = shuffled.probeF1()
        #expect(chance < 0.5, "shuffled labels (4 classes, chance 0.25): probe F1 \(chance)")
    }

    @Test func probeSeesThroughDriftButNotThroughLostInformation() {
        let data = Clusters(classes: 4, dim: 32, trainPerClass: 50, testPerClass: 50, seed: 2)
        var rng = SplitMix64(seed: 3)
        // Drift that keeps the information: x' = Q · diag(s) · x + t, Q a random rotation,
        // scales s in [0.2, 5), a large offset t.
        let q = orthonormalise((0..<32).map { _ in (0..<32).map { _ in rng.nextGaussian() } })
        #expect(q.count == 32)
        let s = (0..<32).map { _ in Double(0.2 + 4.8 * rng.nextUnit()) }
        let t = (0..<32).map { _ in Double(10 * rng.nextGaussian()) }
        let drifted = data.mapRows { x in
            (0..<32).map { i in Float((0..<32).reduce(t[i]) { $0 + q[i][$1] * s[$1] * Double(x[$1]) }) }
        }

        // The "head" learnt on the old features fails on the drifted ones...
        let head = LinearProbe.fit(features: data.trainX, labels: data.trainY, dim: 32, classes: 4)
        let headBefore = macroF1Of(head, data), headAfter = macroF1Of(head, drifted)
        #expect(headBefore > 0.95, "head on its own features: \(headBefore)")
        #expect(headAfter < 0.5, "head on drifted features: \(headAfter)")
        // ...while a fresh probe on the drifted features decodes the classes as well as before.
        let probeAfter = drifted.probeF1()
        #expect(probeAfter > 0.95, "probe on drifted features: \(probeAfter)")
        // A per-dimension affine map (signs flipped, scales 0.1-10, offsets) is undone exactly by
        // the probe's standardisation, up to rounding.
        let a = (0..<32).map { i in Float(i % 2 == 0 ? 1 : -1) * (0.1 + 9.9 * rng.nextUnit()) }
        let rescaled = data.mapRows { x in (0..<32).map { i in a[i] * x[i] + 5 * Float(i) } }
        #expect(abs(rescaled.probeF1() - data.probeF1()) < 0.02)

        let diagnosis = ProbeDiagnosis(domain: "d", headF1AtLearning: headBefore, headF1Now: headAfter,
                                       probeF1AtLearning: data.probeF1(), probeF1Now: probeAfter)
        #expect(diagnosis.kind == .alignmentDrift)

        // Losing the information: project out the span of the class means; only N(0, I) noise is left.
        let meanSpan = orthonormalise(data.means)
        let collapsed = data.mapRows { x in
            var y = x.map(Double.init)
            for b in meanSpan {
                let dot = zip(y, b).reduce(0) { $0 + $1.0 * $1.1 }
                y = zip(y, b).map { $0 - dot * $1 }
            }
            return y.map { Float($0) }
        }
        let probeCollapsed = collapsed.probeF1()
        #expect(probeCollapsed < 0.5, "probe after the class directions are gone: \(probeCollapsed)")
        let lost = ProbeDiagnosis(domain: "d", headF1AtLearning: headBefore, headF1Now: macroF1Of(head, collapsed),
                                  probeF1AtLearning: data.probeF1(), probeF1Now: probeCollapsed)
        #expect(lost.kind == .knowledgeLoss)
    }

    @Test func probeIsDeterministic() {
        let data = Clusters(classes: 5, dim: 16, trainPerClass: 30, testPerClass: 30, spread: 0.4, seed: 4)
        let config = LinearProbeConfig(epochs: 30, batchSize: 32, seed: 11)
        let a = LinearProbe.fit(features: data.trainX, labels: data.trainY, dim: 16, classes: 5, config: config)
        let b = LinearProbe.fit(features: data.trainX, labels: data.trainY, dim: 16, classes: 5, config: config)
        #expect(a.weight == b.weight && a.bias == b.bias)
        #expect(a.predict(features: data.testX) == b.predict(features: data.testX))
        #expect(data.probeF1(config) == data.probeF1(config))
        // The seed drives the mini-batch order: another seed gives other (still good) weights.
        let c = LinearProbe.fit(features: data.trainX, labels: data.trainY, dim: 16, classes: 5,
                                config: LinearProbeConfig(epochs: 30, batchSize: 32, seed: 12))
        #expect(c.weight != a.weight)
    }

    @Test func probeEdgeCases() {
        // A constant dimension (no spread on the training rows) is ignored, even if it differs at test time.
        var data = Clusters(classes: 3, dim: 8, trainPerClass: 20, testPerClass: 20, spread: 1.5, seed: 5)
        data = data.mapRows { $0 + [3] }
        data.dim = 9
        let base = data.probeF1()
        #expect(base > 0.9, "\(base)")
        var shiftedTest = data
        for r in 0..<shiftedTest.testY.count { shiftedTest.testX[r * 9 + 8] = 1000 }
        #expect(shiftedTest.probeF1() == base)
        // No test rows: 0. No training rows: class 0 everywhere.
        #expect(LinearProbe.fitAndScore(trainFeatures: data.trainX, trainLabels: data.trainY, testFeatures: [], testLabels: [],
                                        dim: 9, classes: 3, config: LinearProbeConfig()) == 0)
        let empty = LinearProbe.fit(features: [], labels: [], dim: 9, classes: 3)
        #expect(empty.predict(features: data.testX).allSatisfy { $0 == 0 })
    }

    // MARK: diagnosis

    @Test func classifyByHand() throws {
        // Head drop below 2 points: stable, whatever the probe did.
        let stable = ProbeDiagnosis(domain: "banking", headF1AtLearning: 0.90, headF1Now: 0.89,
                                    probeF1AtLearning: 0.92, probeF1Now: 0.70)
        #expect(stable.kind == .stable && close(stable.headDrop, 0.01) && close(stable.probeDrop, 0.22))
        // Head −30 points, probe −5 (< 15): the knowledge is still decodable.
        let drift = ProbeDiagnosis(domain: "travel", headF1AtLearning: 0.90, headF1Now: 0.60,
                                   probeF1AtLearning: 0.92, probeF1Now: 0.87)
        #expect(drift.kind == .alignmentDrift && close(drift.headDrop, 0.30) && close(drift.probeDrop, 0.05))
        // Head −30, probe −20 (≥ 15): the representation lost it.
        let loss = ProbeDiagnosis(domain: "home", headF1AtLearning: 0.90, headF1Now: 0.60,
                                  probeF1AtLearning: 0.92, probeF1Now: 0.72)
        #expect(loss.kind == .knowledgeLoss)
        // Boundaries: head drop == threshold is not stable; probe drop == half the head drop is loss;
        // a probe that improved is drift.
        #expect(ProbeDiagnosis.classify(headDrop: 0.02, probeDrop: 0.0) == .alignmentDrift)
        #expect(ProbeDiagnosis.classify(headDrop: 0.019, probeDrop: 0.5) == .stable)
        #expect(ProbeDiagnosis.classify(headDrop: 0.2, probeDrop: 0.1) == .knowledgeLoss)
        #expect(ProbeDiagnosis.classify(headDrop: 0.2, probeDrop: 0.0999) == .alignmentDrift)
        #expect(ProbeDiagnosis.classify(headDrop: 0.2, probeDrop: -0.05) == .alignmentDrift)
        #expect(ProbeDiagnosis.classify(headDrop: 0.1, probeDrop: 0.01, threshold: 0.15) == .stable)
        #expect(ProbeDiagnosis.classify(headDrop: .nan, probeDrop: 0) == .undetermined)
        // Codable, with the kind as its string.
        let json = String(decoding: try JSONEncoder().encode(drift), as: UTF8.self)
        #expect(json.contains("\"kind\":\"alignment-drift\"") && json.contains("\"headDrop\""))
        #expect(try JSONDecoder().decode(ProbeDiagnosis.self, from: Data(json.utf8)) == drift)
    }

    // MARK: multi-intent

    @Test func multiIntentByHand() {
        let gold: [(domain: String, intents: [String])] = [
            ("banking", ["balance", "transfer"]),
            ("banking", ["balance", "freeze", "pin"]),
            ("banking", ["transfer", "pin"]),
            ("banking", ["freeze", "balance"]),
            ("travel", ["book_flight", "book_hotel"]),
        ]
        let predictions: [(domain: String, intent: String)] = [
            ("banking", "transfer"),    // any-hit
            ("banking", "transfer"),    // domain right, intent not gold
            ("travel", "pin"),          // domain wrong (the intent name matches, but not in this domain)
            ("banking", "freeze"),      // any-hit
            ("travel", "book_hotel"),   // travel: any-hit
        ]
        let banking = Diagnostics.score(domain: "banking", predictions: predictions, gold: gold, singleIntentAccuracy: 0.9)
        #expect(banking.count == 4)
        #expect(close(banking.anyHit, 2.0 / 4) && close(banking.domainHit, 3.0 / 4))
        #expect(close(banking.fragility, 0.9 - 0.5) && banking.singleIntentAccuracy == 0.9)

        let all = Diagnostics.scores(predictions: predictions, gold: gold, singleIntentAccuracy: ["banking": 0.9, "travel": 0.8])
        #expect(all.map(\.domain) == ["banking", "travel"])
        #expect(all[0] == banking)
        #expect(all[1].count == 1 && all[1].anyHit == 1 && all[1].domainHit == 1 && close(all[1].fragility, 0.8 - 1))

        let none = Diagnostics.score(domain: "home", predictions: predictions, gold: gold, singleIntentAccuracy: 0.7)
        #expect(none.count == 0 && none.anyHit == 0 && none.domainHit == 0 && none.fragility == 0)
    }

    @Test func markdownHasBothTables() {
        let probes = [
            ProbeDiagnosis(domain: "travel", headF1AtLearning: 0.90, headF1Now: 0.60, probeF1AtLearning: 0.92, probeF1Now: 0.87),
            ProbeDiagnosis(domain: "home", headF1AtLearning: 0.80, headF1Now: 0.795, probeF1AtLearning: 0.85, probeF1Now: 0.85),
        ]
        let multi = [MultiIntentScore(domain: "banking", count: 4, anyHit: 0.5, domainHit: 0.75, singleIntentAccuracy: 0.9)]
        let md = Diagnostics.markdown(probes: probes, multiIntent: multi)
        let lines = md.split(separator: "\n").map(String.init)
        #expect(lines.contains("| travel | 90.0 | 60.0 | 30.0 | 92.0 | 87.0 | 5.0 | alignment-drift |"), "\(md)")
        #expect(lines.contains("| home | 80.0 | 79.5 | 0.5 | 85.0 | 85.0 | 0.0 | stable |"), "\(md)")
        // a score without set prediction (results made before it) shows "-" for exact-set and τ
        #expect(lines.contains("| banking | 4 | 50.0 | - | - | 75.0 | 90.0 | 40.0 |"), "\(md)")
        #expect(lines.filter { $0.hasPrefix("|---") }.count == 2)
        #expect(Diagnostics.markdown(probes: [], multiIntent: []).isEmpty)
        #expect(!Diagnostics.markdown(probes: probes, multiIntent: []).contains("fragility"))
    }
}

