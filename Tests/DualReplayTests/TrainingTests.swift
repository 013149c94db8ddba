import CKernels
import Foundation
import Testing
@testable import DualReplay

/// The composed training step (encoder + adapter/LoRA + heads + losses) against finite
/// differences, a toy task that must be learned, and the parameter-count audit.
@Suite struct TrainingTests {
    static let tiny = BertConfig(layers: 2, hidden: 8, heads: 2, intermediate: 12, vocabSize: 20,
                                 maxPositions: 10, typeVocabSize: 2, layerNormEps: 1e-12, hiddenAct: "gelu")

    static func model(_ configure: (inout ModelSpec) -> Void, seed: UInt64 = 5) -> ContinualModel {
        var spec = ModelSpec()
        spec.bottleneck = 4
        spec.loraRank = 2
        spec.routerHidden = 6
        configure(&spec)
        let m = ContinualModel(base: BertWeights(config: tiny, seed: seed), spec: spec, seed: seed)
        m.addDomain(name: "a", intents: ["a1", "a2", "a3"])
        m.addDomain(name: "b", intents: ["b1", "b2"])
        // move every parameter off its initial value (W_up = 0 would hide the down-projection)
        var rng = SeededRandom(seed: seed + 1)
        for t in m.store.tensors where t.group != "base" {
            for i in 0..<t.count { m.store.values.base[t.offset + i] = rng.float(-0.5, 0.5) + (t.group == "gate" ? 1 : 0) }
        }
        return m
    }

    static func batch(_ m: ContinualModel) -> TrainingBatch {
        var tb = TrainingBatch()
        let a = m.domains[0].classRange, b = m.domains[1].classRange
        tb.append(ids: [1, 5, 7, 2], gate: 0, label: 1, range: a)
        tb.append(ids: [1, 9, 2], gate: 1, label: 4, range: b, logits: [0.3, -0.2])
        tb.append(ids: [1, 6, 6, 8, 2], gate: 0, label: 0, range: a, logits: [0.1, 0.5, -0.4])
        tb.append(ids: [1, 11, 12, 2], gate: 1, label: -1, range: b, anchor: (0..<8).map { Float($0) / 10 - 0.3 })
        return tb
    }

    static func checkModelGradients(_ m: ContinualModel, name: String, groups: Set<String>, maxPerTensor: Int = 400,
                                    sourceLocation: SourceLocation = #_sourceLocation) throws {
        var w = LossWeights()
        w.logitReplay = 0.7
        w.anchor = 0.5
        w.orthogonality = 0.3
        let tb = batch(m)
        _ = try m.computeGradients(tb, weights: w)
        let analytic = Array(m.store.grads.buffer)
        var worst: [String: Double] = [:]
        for t in m.store.tensors where groups.contains(t.group) && t.trainable {
            var e = 0.0
            let stride = max(1, t.count / maxPerTensor)
            for k in Swift.stride(from: 0, to: t.count, by: stride) {
                let i = t.offset + k
                let orig = m.store.values.base[i]
                // base weights include embedding rows feeding a LayerNorm of 8 entries: a finer step
                let h: Float = t.group == "base" ? 2e-3 : 1e-2
                m.store.values.base[i] = orig + h
                let lp = try m.computeGradients(tb, weights: w).total
                m.store.values.base[i] = orig - h
                let lm = try m.computeGradients(tb, weights: w).total
                m.store.values.base[i] = orig
                let num = (lp - lm) / (2 * Double(h))
                let a = Double(analytic[i])
                e = max(e, abs(a - num) / max(1, abs(a), abs(num)))
            }
            worst[t.name] = e
        }
        #expect(!worst.isEmpty, "\(name): no tensor checked", sourceLocation: sourceLocation)
        for (t, e) in worst.sorted(by: { $0.key < $1.key }) {
            #expect(e <= 1e-3, "\(name) d\(t): worst error \(e)", sourceLocation: sourceLocation)
        }
    }

    @Test func gatedAdapterOnLayerOutputGradients() throws {
        let m = Self.model { $0.adapter = true; $0.placement = .output }
        try Self.checkModelGradients(m, name: "adapter/output", groups: ["adapter", "gate", "head"])
    }

    @Test func gatedAdapterHoulsbyPlacementGradients() throws {
        let m = Self.model { $0.adapter = true; $0.placement = .ffn; $0.activation = .gelu; $0.adapterLayers = [1] }
        try Self.checkModelGradients(m, name: "adapter/ffn", groups: ["adapter", "gate", "head"])
    }

    @Test func loraGradients() throws {
        let m = Self.model { $0.lora = true }
        try Self.checkModelGradients(m, name: "lora", groups: ["lora", "head"])
    }

    @Test func oloraGradientsIncludeOrthogonalityPenalty() throws {
        let m = Self.model { $0.lora = true; $0.loraPerDomain = true }
        #expect(m.loraSets == 2)
        // earlier set frozen, newest trainable
        #expect(!m.store.tensor("lora.0.0.q.A").trainable && m.store.tensor("lora.1.0.q.A").trainable)
        try Self.checkModelGradients(m, name: "olora", groups: ["lora", "head"])
    }

    @Test func fullFineTuneGradients() throws {
        let m = Self.model { $0.fullFineTune = true }
        try Self.checkModelGradients(m, name: "full-ft", groups: ["base", "head"], maxPerTensor: 300)
    }

    /// Adding a domain to Dual-Replay adds exactly one gate row per adapter slot, one head and
    /// one router output; the shared adapter does not grow.
    @Test func parameterAuditIsConstantInDomains() {
        var spec = ModelSpec()
        spec.adapter = true
        let m = ContinualModel(base: BertWeights(config: Self.tiny, seed: 1), spec: spec, seed: 1)
        let C = Self.tiny.hidden, R = spec.bottleneck, S = m.adapterLayers.count
        var before = (adapter: m.store.count(group: "adapter"), gate: m.store.count(group: "gate"),
                      head: m.store.count(group: "head"), router: m.store.count(group: "router"))
        for (k, n) in [3, 7, 2, 5].enumerated() {
            m.addDomain(name: "d\(k)", intents: (0..<n).map { "i\($0)" })
            let after = (adapter: m.store.count(group: "adapter"), gate: m.store.count(group: "gate"),
                         head: m.store.count(group: "head"), router: m.store.count(group: "router"))
            #expect(after.adapter == before.adapter)
            #expect(after.gate - before.gate == S * R)
            #expect(after.head - before.head == n * C + n)
            #expect(after.router - before.router == spec.routerHidden + 1)
            #expect(m.store.tensor("adapter.0.gates").shape == [k + 1, R])
            before = after
        }
    }

    /// A tiny random encoder learns a separable two-domain task through the gated adapter alone;
    /// the frozen base does not change by a single byte.
    @Test func toyTaskLossFallsAccuracyRisesBaseUntouched() throws {
        let cfg = BertConfig(layers: 2, hidden: 32, heads: 4, intermediate: 64, vocabSize: 60,
                             maxPositions: 16, typeVocabSize: 2, layerNormEps: 1e-12, hiddenAct: "gelu")
        var spec = ModelSpec()
        spec.adapter = true
        spec.bottleneck = 8
        let base = BertWeights(config: cfg, seed: 3)
        let baseBytes = Array(base.arena.buffer)
        let m = ContinualModel(base: base, spec: spec, seed: 3)
        m.addDomain(name: "x", intents: ["x0", "x1", "x2"])
        m.addDomain(name: "y", intents: ["y0", "y1", "y2"])
        // intent c of domain d is signalled by tokens 10 + 10d + 3c ... +2, with noise tokens
        var rng = SeededRandom(seed: 9)
        func example(_ d: Int, _ c: Int) -> [Int32] {
            var ids: [Int32] = [1]
            for _ in 0..<4 { ids.append(Int32(10 + 10 * d + 3 * c + Int(rng.next() % 3))) }
            ids.append(Int32(4 + Int(rng.next() % 5)))
            ids.append(2)
            return ids
        }
        func makeBatch(_ n: Int) -> TrainingBatch {
            var tb = TrainingBatch()
            for _ in 0..<n {
                let d = Int(rng.next() % 2), c = Int(rng.next() % 3)
                tb.append(ids: example(d, c), gate: Int32(d), label: Int32(m.domains[d].classOffset + c), range: m.domains[d].classRange)
            }
            return tb
        }
        let test = makeBatch(60)
        func accuracy() -> Double {
            let logits = m.logits(test.sequences, gateIds: test.gateIds)
            let V = m.classCount
            var correct = 0
            for b in 0..<test.count {
                let r = Int(test.rangeLo[b])..<Int(test.rangeHi[b])
                let pred = r.max { logits[b * V + $0] < logits[b * V + $1] }!
                if pred == Int(test.labels[b]) { correct += 1 }
            }
            return Double(correct) / Double(test.count)
        }
        var opt = OptimizerConfig()
        opt.learningRate = 5e-3
        let step = AdamWStep(config: opt)
        let acc0 = accuracy()
        var losses: [Double] = []
        for s in 0..<60 {
            losses.append(try m.trainStep(makeBatch(16), weights: LossWeights(), optimizer: step, lr: opt.learningRate(step: s, total: 60)).total)
        }
        let acc1 = accuracy()
        let early = losses.prefix(5).reduce(0, +) / 5, late = losses.suffix(5).reduce(0, +) / 5
        #expect(late < 0.5 * early, "loss \(early) -> \(late)")
        #expect(acc1 > acc0 + 0.3 && acc1 >= 0.9, "accuracy \(acc0) -> \(acc1)")
        #expect(Array(base.arena.buffer) == baseBytes, "the frozen base changed")
    }

    /// The live routed path (router features, then the gated pass continuing from the shared
    /// frozen prefix) gives exactly the logits of a full gated pass with the same gates.
    @Test(arguments: [nil, 1, 2] as [Int?])
    func routedPassSharesThePrefixExactly(routerLayer: Int?) throws {
        let m = Self.model { $0.adapter = true; $0.adapterLayers = [1]; $0.routerLayer = routerLayer }
        let router = DomainRouter(model: m)
        let seqs: [[Int32]] = [[1, 5, 7, 2], [1, 9, 2], [1, 6, 6, 8, 2]]
        let live = RoutedPredictor(model: m, router: router).predictChunk(seqs, features: .live)
        #expect(m.routerLayer == (routerLayer ?? 2) && m.resumeLayer == 1)
        let full = m.logits(seqs, gateIds: live.domains.map(Int32.init))
        #expect(live.logits == full)
        #expect(RoutedPredictor(model: m, router: router).predictChunk(seqs, features: .cached).domains == live.domains)
    }

    @Test func nonFiniteLossStopsWithStepAndDomain() {
        let m = Self.model { $0.adapter = true }
        m.store.withValues(TensorName.headWeight) { $0[0] = .nan }
        #expect(throws: TrainingError.self) {
            _ = try m.trainStep(Self.batch(m), weights: LossWeights(), optimizer: AdamWStep(config: OptimizerConfig()), lr: 1e-3)
        }
        do {
            _ = try m.trainStep(Self.batch(m), weights: LossWeights(), optimizer: AdamWStep(config: OptimizerConfig()), lr: 1e-3)
        } catch {
            #expect(error.localizedDescription.contains("domain 'b'") && error.localizedDescription.contains("step"))
        }
    }
}
