import CKernels
import Foundation
import Testing
@testable import DualReplay

/// Prototype routing: the kernel against a plain reference, prototypes as class means of the
/// frozen router features, routing by them alone or fused with the MLP, training left untouched,
/// persistence, config validation. The tiny random encoder of `StateTests` keeps it fast.
@Suite struct PrototypeRoutingTests {
    /// log p(d|x) in double precision, straight from the definition (per-domain log-sum-exp).
    static func reference(x: [Float], protos: [Float], classDomain: [Int32], tau: Double, B: Int, C: Int, V: Int, K: Int) -> [Double] {
        func norm(_ a: [Float], _ r: Int) -> Double { (0..<C).reduce(0.0) { $0 + Double(a[r * C + $1]) * Double(a[r * C + $1]) }.squareRoot() }
        var out = [Double](repeating: -1e30, count: B * K)
        for b in 0..<B {
            let xn = norm(x, b)
            let l = (0..<V).map { c -> Double in
                let pn = norm(protos, c)
                let dot = (0..<C).reduce(0.0) { $0 + Double(x[b * C + $1]) * Double(protos[c * C + $1]) }
                return (xn > 0 && pn > 0 ? dot / (xn * pn) : 0) / tau
            }
            let top = l.max()!
            let lz = top + log(l.reduce(0.0) { $0 + exp($1 - top) })
            for d in 0..<K {
                let mine = (0..<V).filter { classDomain[$0] == Int32(d) }.map { l[$0] }
                guard let m = mine.max() else { continue }
                out[b * K + d] = m + log(mine.reduce(0.0) { $0 + exp($1 - m) }) - lz
            }
        }
        return out
    }

    static func kernel(x: [Float], protos: [Float], classDomain: [Int32], tau: Float, B: Int, C: Int, V: Int, K: Int) -> [Float] {
        var out = [Float](repeating: .nan, count: B * K)
        var scratch = [Float](repeating: .nan, count: Int(dr_prototype_scratch_size(Int64(B), Int64(V), Int64(K))))
        dr_prototype_logprob(&out, &scratch, x, protos, classDomain, tau, Int64(B), Int64(C), Int64(V), Int64(K))
        return out
    }

    /// Random inputs with a zero prototype, a zero input row and a domain without classes; then a
    /// temperature so low that a domain's classes sit ~300 nats below the best one, which a single
    /// max-shift over all classes would underflow to -inf.
    @Test(arguments: [0.1, 0.003] as [Float])
    func kernelMatchesTheReference(tau: Float) {
        let B = 6, C = 24, V = 9, K = 4
        var rng = SeededRandom(seed: 5)
        var x = (0..<(B * C)).map { _ in Float.random(in: -1...1, using: &rng) }
        var protos = (0..<(V * C)).map { _ in Float.random(in: -1...1, using: &rng) }
        for i in 0..<C { x[2 * C + i] = 0; protos[4 * C + i] = 0 }
        let classDomain: [Int32] = [0, 0, 1, 2, 1, 0, 2, 2, 1]  // domain 3 has no classes
        let got = Self.kernel(x: x, protos: protos, classDomain: classDomain, tau: tau, B: B, C: C, V: V, K: K)
        let want = Self.reference(x: x, protos: protos, classDomain: classDomain, tau: Double(tau), B: B, C: C, V: V, K: K)
        for b in 0..<B {
            #expect(got[b * K + 3] == -1e30, "row \(b): a domain without classes")
            var mass = 0.0
            for d in 0..<3 {
                let g = Double(got[b * K + d]), w = want[b * K + d]
                #expect(g.isFinite && abs(g - w) <= 1e-4 * max(1, abs(w)), "row \(b) domain \(d): \(g) vs \(w)")
                mass += exp(w)
            }
            #expect(abs(mass - 1) < 1e-9)
        }
        if tau < 0.01 { #expect((0..<(B * K)).contains { got[$0] < -100 && got[$0] > -1e29 }, "no far domain exercised") }
    }

    static func state(_ mode: String?, weight: Float? = nil, onboard names: [(String, Int)] = [("a", 0), ("b", 6), ("c", 12)]) throws -> ContinualState {
        var cfg = StateTests.config()
        cfg.methods[0].router.prototypes.mode = mode.map { RouterPrototypes(rawValue: $0)! }
        cfg.methods[0].router.prototypes.weight = weight
        let s = try ContinualState.create(config: cfg, encoder: try StateTests.encoder(), generalTexts: StateTests.general, modelPath: nil)
        for (n, b) in names { _ = try s.onboard(StateTests.domain(n, base: b)) }
        return s
    }

    static func testSequences(_ s: ContinualState) -> (seqs: [[Int32]], domains: [Int32]) {
        var seqs: [[Int32]] = [], doms: [Int32] = []
        for (k, (n, b)) in [("a", 0), ("b", 6), ("c", 12)].enumerated() {
            for e in StateTests.domain(n, base: b).test { seqs.append(s.encoder.tokenizer.encode(e.text)); doms.append(Int32(k)) }
        }
        return (seqs, doms)
    }

    /// Each prototype is the mean frozen router feature of its intent's training utterances; the
    /// prototypes are not trained and are not counted as trainable parameters.
    @Test func prototypesAreClassMeansOfFrozenFeatures() throws {
        let s = try Self.state("only")
        let m = s.model, C = m.config.hidden
        let protos = m.store.array("router.proto")
        #expect(protos.count == m.classCount * C && m.prototypeFloats == protos.count)
        #expect(!m.store.tensor("router.proto").trainable)
        #expect(m.store.trainableSegments().allSatisfy { seg in seg.offset + seg.count <= m.store.tensor("router.proto").offset
            || seg.offset >= m.store.tensor("router.proto").offset + protos.count })
        for (k, (n, b)) in [("a", 0), ("b", 6), ("c", 12)].enumerated() {
            let d = StateTests.domain(n, base: b)
            for (i, intent) in d.intents.enumerated() {
                let seqs = d.train.filter { $0.intent == intent }.map { s.encoder.tokenizer.encode($0.text) }
                let f = m.routerFeatures(PackedBatch(seqs))
                let row = m.domains[k].classOffset + i
                for j in 0..<C {
                    let mean = (0..<seqs.count).reduce(0.0) { $0 + Double(f[$1 * C + j]) } / Double(seqs.count)
                    #expect(abs(Double(protos[row * C + j]) - mean) < 1e-5, "class \(row) feature \(j)")
                }
            }
        }
    }

    /// "only": the route is the argmax of the reference prototype distribution, and rewriting the
    /// MLP's weights changes nothing.
    @Test func prototypeOnlyRoutingIgnoresTheMLP() throws {
        let s = try Self.state("only")
        let router = try #require(s.router)
        let m = s.model, C = m.config.hidden, K = m.domains.count, V = m.classCount
        let (seqs, _) = Self.testSequences(s)
        let feats = router.features(seqs).flatMap { $0 }
        var classDomain = [Int32](repeating: 0, count: V)
        for (d, slot) in m.domains.enumerated() { for c in slot.classRange { classDomain[c] = Int32(d) } }
        let ref = Self.reference(x: feats, protos: m.store.array("router.proto"), classDomain: classDomain, tau: 0.02,
                                 B: seqs.count, C: C, V: V, K: K)
        let route = { RoutedPredictor(model: m, router: router).predictChunk(seqs, features: .cached).domains.map(Int32.init) }
        let routes = route()
        for b in 0..<seqs.count {
            let best = (0..<K).max { ref[b * K + $0] < ref[b * K + $1] }!
            let margin = ref[b * K + best] - (0..<K).filter { $0 != best }.map { ref[b * K + $0] }.max()!
            if margin > 1e-3 { #expect(routes[b] == Int32(best), "sequence \(b)") }
        }
        let w2 = m.store.value("router.w2")
        for i in 0..<m.store.tensor("router.w2").count { w2[i] = Float(i % 7) - 3 }
        #expect(route() == routes)
    }

    /// Fitting prototypes draws no random numbers and touches no trained tensor: with weight 0 the
    /// fused router is the plain MLP, and every other parameter is bit-identical to a run without
    /// prototypes. Larger weights move the probabilities towards the prototypes'.
    @Test func prototypesLeaveTrainingUntouched() throws {
        let plain = try Self.state("off"), fused0 = try Self.state("fused", weight: 0), fused = try Self.state("fused", weight: 4)
        for t in plain.model.store.tensors {
            #expect(fused0.model.store.array(t.name) == plain.model.store.array(t.name), "\(t.name)")
        }
        let (seqs, doms) = Self.testSequences(plain)
        let K = plain.model.domains.count
        let f = plain.router!.features(seqs).flatMap { $0 }
        let p0 = plain.router!.probabilities(f, count: seqs.count), p1 = fused0.router!.probabilities(f, count: seqs.count)
        #expect(zip(p0, p1).allSatisfy { abs($0 - $1) < 1e-6 })
        // fused = p_mlp · p_proto^w, renormalised
        let p4 = fused.router!.probabilities(f, count: seqs.count)
        let lp = fused.router!.prototypeLogProbabilities(f, count: seqs.count)
        for b in 0..<seqs.count {
            let un = (0..<K).map { Double(p0[b * K + $0]) * exp(4 * Double(lp[b * K + $0])) }
            let z = un.reduce(0, +)
            for d in 0..<K { #expect(abs(Double(p4[b * K + d]) - un[d] / z) < 1e-4, "sequence \(b) domain \(d)") }
        }
        #expect(doms.count == seqs.count)
    }

    /// The prototypes are part of the state: a reopened state holds them and routes the same.
    @Test func prototypesSurviveSaveAndReopen() throws {
        let s = try Self.state("fused")
        let dir = try TestPaths.tempDir().appendingPathComponent("state")
        _ = try s.save(to: dir)
        let r = try ContinualState.open(dir, encoder: try StateTests.encoder())
        #expect(r.model.store.array("router.proto") == s.model.store.array("router.proto"))
        #expect(r.settings.spec.routerPrototypes == PrototypeRouting(mode: .fused))
        let texts = ["w0 w31 w32", "w8 w30", "w13 w33", "w39"]
        #expect(r.predict(texts).map(\.domain) == s.predict(texts).map(\.domain))
        let cfg = try s.export(to: dir.deletingLastPathComponent().appendingPathComponent("export.safetensors"))
        #expect(cfg.routerPrototypes?.mode == .fused && cfg.tensors["router.proto"] == [s.model.classCount, s.model.config.hidden])
    }

    @Test func badPrototypeSettingsAreConfigErrors() throws {
        // an unknown mode cannot be built in Swift; it is refused where it can appear, in a file
        #expect {
            _ = try JSONDecoder().decode(MethodConfig.self, from: Data(#"{"kind":"dual-replay","router":{"prototypes":{"mode":"nearest"}}}"#.utf8))
        } throws: { ($0 as? ConfigError)?.localizedDescription.contains("router.prototypes.mode") ?? false }
        for (mode, tau, weight, field) in [(RouterPrototypes.only, 0, nil, "router.prototypes.temperature"),
                                           (.fused, nil, -1, "router.prototypes.weight")] as [(RouterPrototypes, Float?, Float?, String)] {
            var m = MethodConfig(kind: .dualReplay)
            m.router.prototypes.mode = mode
            m.router.prototypes.temperature = tau
            m.router.prototypes.weight = weight
            #expect {
                _ = try MethodSettings.resolve(m, training: TrainingDefaults())
            } throws: { ($0 as? ConfigError)?.localizedDescription.contains(field) ?? false }
        }
        var off = MethodConfig(kind: .dualReplay)
        off.router.prototypes.mode = .off
        #expect(try MethodSettings.resolve(off, training: TrainingDefaults()).spec.routerPrototypes == nil)
    }
}
