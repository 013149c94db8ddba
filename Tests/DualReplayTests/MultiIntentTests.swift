import CKernels
import Foundation
import Testing
@testable import DualReplay

/// The remedy for multi-intent fragility (issue #14 item 2): the soft-target set cross-entropy
/// kernel (plain reference, finite differences, a set of one = the single-label kernel bit for
/// bit), the synthesis of multi-intent training utterances, the `multiIntent` method option, the
/// set decision rule with exact-set accuracy, and what the option changes in training (the SGD
/// rows) and what it leaves alone (buffer, prototypes; off = bit-identical).
@Suite struct MultiIntentTests {
    // MARK: - The kernel

    /// B = 4 rows of V = 10 logits, heads [0,3), [3,7), [3,7), [7,10); gold sets of 1, 2, 3 and 2.
    struct SetXentProblem {
        static let B = 4, V = 10
        var logits: [Float]
        var offsets: [Int64] = [0, 1, 3, 6, 8]
        var sets: [Int32] = [1, 4, 6, 3, 5, 6, 9, 7]
        var lo: [Int32] = [0, 3, 3, 7]
        var hi: [Int32] = [3, 7, 7, 10]
        var weights: [Float] = [0.4, 0.1, 0.3, 0.2]

        init(seed: UInt64) {
            var rng = SeededRandom(seed: seed)
            logits = rng.floats(Self.B * Self.V, -3, 3)
        }

        /// Runs the kernel; the outputs start filled with 7 to show what is written.
        func run() -> (rc: Int32, losses: [Float], dlogits: [Float], probs: [Float]) {
            var losses = [Float](repeating: 7, count: Self.B)
            var dlogits = [Float](repeating: 7, count: Self.B * Self.V)
            var probs = [Float](repeating: 7, count: Self.B * Self.V)
            let rc = dr_softmax_set_xent_forward_backward(&losses, &dlogits, &probs, logits, offsets, sets, lo, hi, weights,
                                                          Int64(Self.B), Int64(Self.V))
            return (rc, losses, dlogits, probs)
        }

        func weightedLoss() -> Double {
            let l = run().losses
            return (0..<Self.B).reduce(0.0) { $0 + Double(weights[$1]) * Double(l[$1]) }
        }

        /// Double reference: loss_b = logsumexp over [lo,hi) − mean of the set's logits;
        /// dlogits = w (softmax − uniform over the set), probs = softmax, both 0 outside the range.
        func reference() -> (losses: [Double], dlogits: [Double], probs: [Double]) {
            var losses: [Double] = [], d = [Double](repeating: 0, count: Self.B * Self.V), p = d
            for b in 0..<Self.B {
                let r = Int(lo[b])..<Int(hi[b]), x = (0..<Self.V).map { Double(logits[b * Self.V + $0]) }
                let m = r.map { x[$0] }.max()!
                let z = r.reduce(0.0) { $0 + exp(x[$1] - m) }
                let set = sets[Int(offsets[b])..<Int(offsets[b + 1])].map(Int.init)
                losses.append(log(z) + m - set.reduce(0.0) { $0 + x[$1] } / Double(set.count))
                for j in r {
                    p[b * Self.V + j] = exp(x[j] - m) / z
                    d[b * Self.V + j] = Double(weights[b]) * (p[b * Self.V + j] - (set.contains(j) ? 1 / Double(set.count) : 0))
                }
            }
            return (losses, d, p)
        }
    }

    @Test func setXentMatchesThePlainReference() {
        let p = SetXentProblem(seed: 81)
        let (rc, losses, dlogits, probs) = p.run()
        #expect(rc == DR_OK)
        let ref = p.reference()
        #expect(maxAbsDifference(losses, ref.losses) < 1e-5)
        #expect(maxAbsDifference(dlogits, ref.dlogits) < 1e-6)
        #expect(maxAbsDifference(probs, ref.probs) < 1e-6)
    }

    @Test func setXentGradCheck() {
        let p = SetXentProblem(seed: 83)
        let analytic = p.run().dlogits
        let numeric = numericGradient(p, \.logits) { $0.weightedLoss() }
        expectGradient("set xent dlogits", analytic: analytic, numeric: numeric)
    }

    @Test(arguments: [false, true])
    func aSetOfOneIsTheSingleLabelLossBitForBit(ranged: Bool) {
        let B = 6, V = 11
        var rng = SeededRandom(seed: 89)
        let logits = rng.floats(B * V, -4, 4)
        let lo: [Int32] = ranged ? [0, 0, 4, 4, 8, 2] : [0, 0, 0, 0, 0, 0]
        let hi: [Int32] = ranged ? [4, 4, 8, 8, 11, 9] : [11, 11, 11, 11, 11, 11]
        let labels: [Int32] = ranged ? [0, 3, 5, 7, 10, 2] : [0, 3, 5, 7, 10, 2]
        let w = rng.floats(B, 0.1, 1)
        var l1 = [Float](repeating: 0, count: B), d1 = [Float](repeating: 0, count: B * V), p1 = d1
        var l2 = l1, d2 = d1, p2 = d1
        let offsets = (0...B).map(Int64.init)
        #expect(dr_softmax_xent_forward_backward(&l1, &d1, &p1, logits, labels, lo, hi, w, Int64(B), Int64(V)) == DR_OK)
        #expect(dr_softmax_set_xent_forward_backward(&l2, &d2, &p2, logits, offsets, labels, lo, hi, w, Int64(B), Int64(V)) == DR_OK)
        #expect(l1.map(\.bitPattern) == l2.map(\.bitPattern))
        #expect(d1.map(\.bitPattern) == d2.map(\.bitPattern))
        #expect(p1.map(\.bitPattern) == p2.map(\.bitPattern))
        // NULL weights (1/B) and NULL ranges too
        #expect(dr_softmax_xent_forward_backward(&l1, &d1, nil, logits, labels, nil, nil, nil, Int64(B), Int64(V)) == DR_OK)
        #expect(dr_softmax_set_xent_forward_backward(&l2, &d2, nil, logits, offsets, labels, nil, nil, nil, Int64(B), Int64(V)) == DR_OK)
        #expect(l1.map(\.bitPattern) == l2.map(\.bitPattern) && d1.map(\.bitPattern) == d2.map(\.bitPattern))
    }

    @Test func setXentRejectsMalformedSetsBeforeWritingAnything() {
        func expectRejected(_ code: Int32, _ edit: (inout SetXentProblem) -> Void, sourceLocation: SourceLocation = #_sourceLocation) {
            var p = SetXentProblem(seed: 97)
            edit(&p)
            let r = p.run()
            #expect(r.rc == code, sourceLocation: sourceLocation)
            #expect(r.losses.allSatisfy { $0 == 7 } && r.dlogits.allSatisfy { $0 == 7 } && r.probs.allSatisfy { $0 == 7 },
                    sourceLocation: sourceLocation)
        }
        expectRejected(DR_ERR_LABEL) { $0.sets[7] = 2 }                 // row 3's head is [7, 10)
        expectRejected(DR_ERR_SET) { $0.sets[2] = 4 }                   // row 1 lists 4 twice
        expectRejected(DR_ERR_SET) { $0.offsets = [0, 1, 1, 6, 8] }     // row 1's set is empty
        expectRejected(DR_ERR_SET) { $0.offsets[0] = 1 }
        expectRejected(DR_ERR_RANGE) { $0.hi[2] = 11 }
        expectRejected(DR_ERR_RANGE) { $0.lo[0] = 3; $0.hi[0] = 3 }
    }

    // MARK: - Synthesis

    static let rows: [IntentExample] = (0..<12).map { i in
        IntentExample(text: "utterance \(i) of \(["a", "b", "c"][i % 3])", intent: ["a", "b", "c"][i % 3], domain: "d", split: .train)
    }

    @Test func synthesisJoinsRowsOfDifferentIntentsDeterministically() {
        let conj = ["and", "and then"]
        let out = MultiIntentSynthesis.synthesize(Self.rows, domain: "d", count: 40, conjunctions: conj, maxIntents: 3)
        #expect(out.count == 40)
        #expect(out == MultiIntentSynthesis.synthesize(Self.rows, domain: "d", count: 40, conjunctions: conj, maxIntents: 3))
        // utterance i is keyed on i alone: a shorter request is a prefix
        #expect(Array(out.prefix(15)) == MultiIntentSynthesis.synthesize(Self.rows, domain: "d", count: 15, conjunctions: conj, maxIntents: 3))
        var sizes = Set<Int>()
        for e in out {
            sizes.insert(e.intents.count)
            #expect((2...3).contains(e.intents.count) && Set(e.intents).count == e.intents.count, "\(e.intents)")
            #expect(e.domain == "d" && e.split == .train)
            // the text is the parts' texts (of these intents, in order) joined by listed conjunctions
            var rest = Substring(e.text)
            for (k, intent) in e.intents.enumerated() {
                if k > 0 {
                    let c = conj.sorted { $0.count > $1.count }.first { rest.hasPrefix(" \($0) ") }
                    #expect(c != nil, "\(e.text)")
                    rest = rest.dropFirst((c?.count ?? 0) + 2)
                }
                let part = Self.rows.first { rest.hasPrefix($0.text) && (rest.count == $0.text.count || rest.dropFirst($0.text.count).hasPrefix(" ")) }
                #expect(part?.intent == intent, "\(e.text)")
                rest = rest.dropFirst(part?.text.count ?? rest.count)
            }
            #expect(rest.isEmpty, "\(e.text)")
        }
        #expect(sizes == [2, 3])
        // another domain name or salt gives other utterances; maxIntents 2 gives pairs only
        #expect(out != MultiIntentSynthesis.synthesize(Self.rows, domain: "e", count: 40, conjunctions: conj, maxIntents: 3))
        #expect(out != MultiIntentSynthesis.synthesize(Self.rows, domain: "d", count: 40, conjunctions: conj, maxIntents: 3,
                                                       salt: MultiIntentSynthesis.validationSalt))
        #expect(MultiIntentSynthesis.synthesize(Self.rows, domain: "d", count: 30, conjunctions: conj, maxIntents: 2).allSatisfy { $0.intents.count == 2 })
        // a one-intent domain has nothing to join; multi-intent rows are never used as parts
        let one = Self.rows.filter { $0.intent == "a" }
        #expect(MultiIntentSynthesis.synthesize(one, domain: "d", count: 10, conjunctions: conj, maxIntents: 2).isEmpty)
        let withMulti = one + [IntentExample(text: "x", intents: ["b", "c"], domain: "d", split: .train)]
        #expect(MultiIntentSynthesis.synthesize(withMulti, domain: "d", count: 10, conjunctions: conj, maxIntents: 2).isEmpty)
    }

    // MARK: - The method option

    @Test func theOptionDecodesStrictlyAndChecksItsBounds() throws {
        func method(_ block: String) -> String { ConfigTests.json(method: #"{"kind": "dual-replay", \#(block)}"#) }
        func load(_ text: String) throws -> MethodSettings {
            let dir = try TestPaths.tempDir()
            let url = dir.appendingPathComponent("x.json")
            try Data(text.utf8).write(to: url)
            return try #require(try ExperimentConfig.load(url).resolvedMethods().first)
        }
        #expect(try load(ConfigTests.json()).multiIntent == nil)
        #expect(try load(method(#""multiIntent": {}"#)).multiIntent == MultiIntentAugmentation())
        #expect(try load(method(#""multiIntent": {"augmentShare": 0}"#)).multiIntent == nil)
        let full = try load(method(#""multiIntent": {"augmentShare": 0.5, "conjunctions": ["plus"], "maxIntents": 3}"#))
        #expect(full.multiIntent == MultiIntentAugmentation(augmentShare: 0.5, conjunctions: ["plus"], maxIntents: 3))
        #expect(MultiIntentAugmentation() == MultiIntentAugmentation(augmentShare: 0.2, conjunctions: ["and", "and also", "and then"], maxIntents: 2))
        let cases: [(block: String, message: String)] = [
            (#""multiIntent": {"augmentShar": 0.2}"#, #"methods[0].multiIntent: unknown field "augmentShar" (did you mean "augmentShare"?)"#),
            (#""multiIntent": {"augmentShare": 5}"#, "methods[dual-replay].multiIntent.augmentShare`: must be in [0.0, 4.0], got 5.0"),
            (#""multiIntent": {"augmentShare": -0.1}"#, "methods[dual-replay].multiIntent.augmentShare`"),
            (#""multiIntent": {"maxIntents": 1}"#, "methods[dual-replay].multiIntent.maxIntents`: must be in 2...5, got 1"),
            (#""multiIntent": {"conjunctions": []}"#, "methods[dual-replay].multiIntent.conjunctions`: must list at least one conjunction"),
            (#""multiIntent": {"conjunctions": ["and", " then"]}"#, "methods[dual-replay].multiIntent.conjunctions[1]`"),
            // off, but a bad field is still an error
            (#""multiIntent": {"augmentShare": 0, "maxIntents": 9}"#, "methods[dual-replay].multiIntent.maxIntents`"),
            (#""multiIntent": {"maxIntents": "two"}"#, "multiIntent.maxIntents"),
        ]
        for c in cases {
            let e = try ConfigTests.loadError(method(c.block))
            #expect(e?.contains(c.message) == true, "\(c.block): \(e ?? "accepted")")
            #expect(e?.contains("x.json") == true, "\(e ?? "accepted")")
        }
    }

    @Test func absentOptionLeavesTheResolvedSettingsAndTheirEncodingAsBefore() throws {
        let s = try MethodSettings.resolve(MethodConfig(kind: .dualReplay), training: TrainingDefaults())
        let text = String(decoding: try JSONEncoder().encode(s), as: UTF8.self)
        #expect(!text.contains("multiIntent"))
        var on = MethodConfig(kind: .dualReplay)
        on.multiIntent = MethodConfig.MultiIntent()
        let onText = String(decoding: try JSONEncoder().encode(try MethodSettings.resolve(on, training: TrainingDefaults())), as: UTF8.self)
        #expect(onText.contains("\"multiIntent\""))
        // the method block encodes back to what it was read from
        #expect(!String(decoding: try JSONEncoder().encode(MethodConfig(kind: .dualReplay)), as: UTF8.self).contains("multiIntent"))
        #expect(try JSONDecoder().decode(MethodConfig.self, from: try JSONEncoder().encode(on)) == on)
    }

    // MARK: - Set prediction and exact-set accuracy

    @Test func theSetRuleAndExactSetAccuracyByHand() {
        // top intent always, others at p >= threshold
        #expect(Diagnostics.predictedSet(probabilities: [0.5, 0.3, 0.2], threshold: 0.25) == [0, 1])
        #expect(Diagnostics.predictedSet(probabilities: [0.5, 0.3, 0.2], threshold: 0.35) == [0])
        #expect(Diagnostics.predictedSet(probabilities: [0.5, 0.3, 0.2], threshold: 0.2) == [0, 1, 2])
        #expect(Diagnostics.predictedSet(probabilities: [0.1, 0.1, 0.8], threshold: 0.9) == [2])
        #expect(Diagnostics.predictedSet(probabilities: [0.4, 0.4, 0.2], threshold: 0.9) == [0]) // tie: the lower index
        // four utterances: {0,1} p=(.5,.4,.1); {2} p=(.2,.2,.6); {0,2} routed away; {1,2} p=(.1,.6,.3)
        let p: [[Double]?] = [[0.5, 0.4, 0.1], [0.2, 0.2, 0.6], nil, [0.1, 0.6, 0.3]]
        let gold: [Set<Int>] = [[0, 1], [2], [0, 2], [1, 2]]
        #expect(Diagnostics.exactSetAccuracy(probabilities: p, gold: gold, threshold: 0.35) == 0.5)  // rows 0, 1
        #expect(Diagnostics.exactSetAccuracy(probabilities: p, gold: gold, threshold: 0.25) == 0.75) // rows 0, 1, 3
        #expect(Diagnostics.exactSetAccuracy(probabilities: p, gold: gold, threshold: 0.45) == 0.25) // row 1
        #expect(Diagnostics.exactSetAccuracy(probabilities: p, gold: gold, threshold: 0.05) == 0)    // every set is {0,1,2}
        let best = Diagnostics.chooseSetThreshold(probabilities: p, gold: gold, grid: [0.05, 0.25, 0.3, 0.35, 0.45])
        #expect(best.threshold == 0.3 && best.accuracy == 0.75) // 0.25 and 0.3 tie: the larger wins

        // the score: domain right and set equal; the single prediction still gives any-hit
        let preds: [(domain: String, intent: String)] = [("s", "a"), ("s", "c"), ("t", "x"), ("s", "b"), ("s", "a")]
        let g: [(domain: String, intents: [String])] = [("s", ["a", "b"]), ("s", ["a", "b"]), ("s", ["a", "c"]), ("s", ["b", "c"]), ("u", ["a", "b"])]
        let sets = [["b", "a"], ["c"], ["x"], ["b", "c", "a"], ["a", "b"]]
        let m = Diagnostics.score(domain: "s", predictions: preds, gold: g, singleIntentAccuracy: 0.9, predictedSets: sets, setThreshold: 0.3)
        #expect(m.count == 4 && m.domainHit == 0.75 && m.anyHit == 0.5 && m.exactSet == 0.25 && m.setThreshold == 0.3)
        #expect(abs(m.fragility - 0.4) < 1e-12)
        #expect(Diagnostics.score(domain: "s", predictions: preds, gold: g, singleIntentAccuracy: 0.9).exactSet == nil)
        let md = Diagnostics.markdown(probes: [], multiIntent: [m])
        #expect(md.contains("| any-hit | exact-set | τ |") && md.contains("| s | 4 | 50.0 | 25.0 | 0.30 | 75.0 | 90.0 | 40.0 |"), "\(md)")
        // results written before exact-set existed still decode (no exactSet key)
        let old = #"{"domain": "s", "count": 3, "anyHit": 0.5, "domainHit": 1, "singleIntentAccuracy": 0.8, "fragility": 0.3}"#
        let decoded = try? JSONDecoder().decode(MultiIntentScore.self, from: Data(old.utf8))
        #expect(decoded?.exactSet == nil && decoded?.anyHit == 0.5)
    }

    // MARK: - Training: what the option changes and what it does not

    static func setup(_ edit: (inout MethodConfig) -> Void) throws -> (DomainTrainer, Scenario) {
        let cfg = StateTests.config()
        var m = cfg.methods[0]
        edit(&m)
        let s = try MethodSettings.resolve(m, training: cfg.training!)
        let enc = try StateTests.encoder()
        let tr = DomainTrainer(settings: s, training: cfg.training!, encoder: enc,
                               tokens: TokenCache(tokenizer: enc.tokenizer, maxLength: cfg.training!.maxLength))
        let sc = try Scenario(domains: [StateTests.domain("a", base: 0, train: 10), StateTests.domain("b", base: 6, train: 10)])
        return (tr, sc)
    }

    /// Trains both domains; returns the learner and each domain's outcome.
    static func train(_ tr: DomainTrainer, _ sc: Scenario) throws -> (LearnerState, [DomainTrainer.Outcome]) {
        let st = try tr.makeLearner(seed: 4, byteBudget: 2400, generalTexts: StateTests.general)
        var outcomes: [DomainTrainer.Outcome] = []
        for k in sc.domains.indices {
            outcomes.append(try tr.learn(st, domain: sc.domains[k], validation: (0...k).map { sc.domains[$0].val }, label: "\(k + 1)"))
        }
        return (st, outcomes)
    }

    static func values(_ m: ContinualModel) -> [UInt32] { m.store.withArrays { v, _, _ in v.map(\.bitPattern) } }

    @Test func anOptionThatSynthesizesNothingTrainsBitIdentically() throws {
        let (off, sc) = try Self.setup { _ in }
        // 30 training rows per domain x 0.01 rounds to no synthesized row: the option's presence alone changes nothing
        let (tiny, _) = try Self.setup { $0.multiIntent = MethodConfig.MultiIntent(); $0.multiIntent?.augmentShare = 0.01 }
        #expect(off.synthesizedRows(sc.domains[0], domainIndex: 0).isEmpty)
        #expect(tiny.settings.multiIntent != nil && tiny.synthesizedRows(sc.domains[0], domainIndex: 0).isEmpty)
        let (a, oa) = try Self.train(off, sc), (b, ob) = try Self.train(tiny, sc)
        #expect(Self.values(a.model) == Self.values(b.model))
        #expect(oa.map(\.validationF1) == ob.map(\.validationF1))
        #expect(a.rng.state == b.rng.state)
    }

    @Test func augmentationChangesTheTrainingRowsOnly() throws {
        let (off, sc) = try Self.setup { _ in }
        let (on, _) = try Self.setup { $0.multiIntent = MethodConfig.MultiIntent(); $0.multiIntent?.augmentShare = 0.5 }
        let d = sc.domains[1]
        let synth = on.synthesizedRows(d, domainIndex: 1)
        #expect(synth.count == 15)
        for r in synth {
            #expect(r.domain == 1 && d.classRange.contains(r.label) && r.extraLabels.count == 1)
            #expect(r.extraLabels.allSatisfy { d.classRange.contains($0) && $0 != r.label })
        }
        let (a, _) = try Self.train(off, sc), (b, _) = try Self.train(on, sc)
        // the heads and adapter trained on more rows
        #expect(Self.values(a.model) != Self.values(b.model))
        // the router's prototypes see only real rows (frozen features): bit-identical
        let pa = a.model.store.array(TensorName.routerPrototypes), pb = b.model.store.array(TensorName.routerPrototypes)
        #expect(!pa.isEmpty && pa.contains { $0 != 0 })
        #expect(pa.map(\.bitPattern) == pb.map(\.bitPattern))
        // the buffer stores real single-intent rows only
        let real = Set(sc.domains.flatMap { dom in dom.train.map { on.tokens.ids($0.text) } })
        for j in sc.domains.indices {
            let items = b.bufferedItems(of: j)
            #expect(!items.isEmpty)
            #expect(items.allSatisfy { real.contains($0.tokenIds) })
        }
    }

    @Test func aMultiIntentRowTrainsTheMeanOfItsLabelsLosses() throws {
        let (tr, sc) = try Self.setup { _ in }
        let m = tr.makeModel(seed: 3)
        var rng = SplitMix64(seed: 1)
        tr.addDomain(m, sc.domains[0], rng: &rng)
        let ids = tr.tokens.ids(sc.domains[0].train[0].text), range = m.domains[0].classRange
        func run(_ label: Int32, extra: [Int32]) throws -> (loss: Double, grads: [Float]) {
            var tb = TrainingBatch()
            tb.append(ids: ids, gate: 0, label: label, range: range, extraLabels: extra)
            let parts = try m.computeGradients(tb, weights: LossWeights())
            return (parts.classification, Array(m.store.grads.buffer))
        }
        let both = try run(0, extra: [2]), first = try run(0, extra: []), second = try run(2, extra: [])
        #expect(abs(both.loss - (first.loss + second.loss) / 2) < 1e-5)
        #expect(abs(both.loss - first.loss) > 1e-4)
        let mean = zip(first.grads, second.grads).map { (Double($0) + Double($1)) / 2 }
        #expect(maxAbsDifference(both.grads, mean) < 1e-5)
        // the rows split into data-parallel chunks keep their extra labels
        var tb = TrainingBatch()
        tb.append(ids: ids, gate: 0, label: 0, range: range)
        tb.append(ids: ids, gate: 0, label: 1, range: range, extraLabels: [2])
        #expect(tb.rows(1..<2).extraLabels == [[2]] && tb.rows(0..<1).extraLabels == [[]])
    }
}
