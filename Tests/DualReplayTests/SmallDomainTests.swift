import Foundation
import Testing
@testable import DualReplay

/// The shapes real domain sets have, on the real encoder: a domain with a single intent, one with
/// two, one with 20 training utterances, test splits of very unequal size; and heads of
/// different sizes in routed rescoring.
@Suite(.serialized) struct SmallDomainTests {
    /// Five synthetic domains of 4 intents reshaped: 0 has one intent, 1 has two, 2 keeps 20
    /// training utterances, 3 keeps 3 test utterances (4 keeps 40).
    static func shapes() -> Scenario {
        let raw = SyntheticCorpus.make(config: SyntheticConfig(domains: 5, intentsPerDomain: 4, trainPerIntent: 16, valPerIntent: 5,
                                                               testPerIntent: 10, seed: 11, multiIntentTestPerDomain: 6))
        func keeping(_ d: DomainData, intents n: Int) -> DomainData {
            let kept = Set(d.intents.sorted().prefix(n))
            func f(_ rows: [IntentExample]) -> [IntentExample] { rows.filter { $0.intents.allSatisfy(kept.contains) } }
            return DomainData(name: d.name, intents: d.intents.filter(kept.contains), train: f(d.train), val: f(d.val), test: f(d.test),
                              multiIntentTest: f(d.multiIntentTest))
        }
        var ds = raw
        ds[0] = keeping(raw[0], intents: 1)
        ds[1] = keeping(raw[1], intents: 2)
        ds[2].train = raw[2].train.fixedSubset(atMost: 20, seed: 5)
        ds[3].test = Array(raw[3].test.prefix(3))
        return try! Scenario(domains: ds)
    }

    static func config(_ methods: [MethodConfig]) -> ExperimentConfig {
        var cfg = RunnerTests.smallConfig(methods)
        cfg.diagnostics = true
        cfg.probeTrainPerDomain = 40
        cfg.training?.epochs = 3
        cfg.training?.routerTraining.epochs = 6
        return cfg
    }

    @Test func scenarioHasTheShapes() {
        let s = Self.shapes()
        #expect(s.domains.map(\.classCount) == [1, 2, 4, 4, 4])
        #expect(s.domains[2].train.count == 20 && Set(s.domains[2].train.map(\.intent)).count > 1)
        #expect(s.domains[3].test.count == 3 && s.domains[4].test.count == 40)
    }

    /// Every shape through a whole Dual-Replay run with diagnostics (and with head rescoring):
    /// nothing breaks, the one-intent domain's figures mean what docs/METRICS.md says, and the
    /// aggregates over multi-intent domains are the hand-computed means.
    @Test func everyShapeRunsAndScoresAsDocumented() throws {
        let enc = try RunnerTests.encoder()
        var plain = MethodConfig(kind: .dualReplay), rescored = plain
        plain.adapter.bottleneck = 16
        rescored.adapter.bottleneck = 16
        rescored.name = "rescored"
        rescored.router.rescore.topK = 3
        rescored.router.rescore.threshold = 0.999
        let cfg = Self.config([plain, rescored])
        let scenario = Self.shapes()
        let runner = ExperimentRunner(config: cfg, scenario: scenario, encoder: enc, generalTexts: SyntheticCorpus.generalText(count: 200, seed: 1),
                                      codeVersion: "test")
        let results = try runner.run()
        let T = scenario.count
        for run in results.runs {
            for i in 0..<T {
                for j in 0...i {
                    for mat in [run.routed, run.oracle, run.routedAccuracy, run.oracleAccuracy] {
                        #expect(mat.f1[i][j].isFinite && (0...1).contains(mat.f1[i][j]), "\(run.method) R[\(i)][\(j)] = \(mat.f1[i][j])")
                    }
                }
                // one intent: the oracle is right by construction; routed F1 of one class with
                // recall a (no false positives inside the domain) is 2a / (1 + a)
                #expect(run.oracle.f1[i][0] == 1)
                let a = run.routedAccuracy.f1[i][0]
                #expect(abs(run.routed.f1[i][0] - 2 * a / (1 + a)) < 1e-12, "routed F1 \(run.routed.f1[i][0]) recall \(a)")
            }
            // average F1 is the unweighted mean over domains, whatever their test sizes (3 vs 40)
            let last = run.routed.f1[T - 1]
            #expect(abs(run.routed.averageF1 - last.reduce(0, +) / Double(T)) < 1e-12)
            // the linear probe of a one-intent domain is trivial: stable, never undetermined
            let probes = try #require(run.probes)
            #expect(probes.count == T - 1 && probes[0].kind == .stable)
            #expect(!probes.contains { $0.kind == .undetermined })
            // a domain of 20 utterances is learned and keeps buffer items
            #expect(run.oracle.f1[2][2] > 0.4, "oracle F1 of the 20-utterance domain \(run.oracle.f1[2][2])")
            let ledger = try #require(run.ledger?.entries.last)
            #expect(ledger.domains.allSatisfy { $0.items >= 1 } && ledger.domains.count == T)
            #expect(run.intentCounts == [1, 2, 4, 4, 4])
        }
        // the multi-intent-domain aggregates: hand-computed over domains 1...4
        for m in results.summaries {
            let run = results.runs.first { $0.method == m.method }!
            let sub = try #require(m.multiIntentDomains)
            #expect(sub.domains == Array(scenario.domainNames[1...]))
            let R = run.routed.f1, O = run.oracle.f1
            #expect(abs(sub.routed.averageF1.mean - (R[4][1] + R[4][2] + R[4][3] + R[4][4]) / 4) < 1e-12)
            #expect(abs(sub.routed.backwardTransfer.mean - ((R[4][1] - R[1][1]) + (R[4][2] - R[2][2]) + (R[4][3] - R[3][3])) / 3) < 1e-12)
            #expect(abs(sub.oracle.averageF1.mean - (O[4][1] + O[4][2] + O[4][3] + O[4][4]) / 4) < 1e-12)
            let f1 = max(R[1][1], R[2][1], R[3][1]) - R[4][1], f2 = max(R[2][2], R[3][2]) - R[4][2], f3 = R[3][3] - R[4][3]
            #expect(abs(sub.routed.forgetting.mean - (f1 + f2 + f3) / 3) < 1e-12)
        }
        let md = ResultsReport.markdown(results)
        #expect(md.contains("| Avg F1 all | Avg F1 >1 intent |") && md.contains("the 4 of 5 domains with more than one intent"))
        // a results file round-trips the new fields
        let back = try JSONDecoder().decode(ExperimentResults.self, from: JSONEncoder().encode(results))
        #expect(back.summaries[0].multiIntentDomains?.domains == Array(scenario.domainNames[1...]))
        #expect(back.runs[0].intentCounts == [1, 2, 4, 4, 4])
    }

    /// The forgetting signal of a one-intent domain is its routed recall on validation rows, taken
    /// as a reference only once the router knows two domains; the newest one-intent domain's
    /// trivial oracle F1 is never a reference.
    @Test func oneIntentForgettingSignalIsRoutedRecall() throws {
        let enc = try RunnerTests.encoder()
        var m = MethodConfig(kind: .dualReplay)
        m.adapter.bottleneck = 16
        let cfg = Self.config([m])
        let training = cfg.training!
        let s = try MethodSettings.resolve(m, training: training)
        let tokens = TokenCache(tokenizer: enc.tokenizer, maxLength: training.maxLength)
        let trainer = DomainTrainer(settings: s, training: training, encoder: enc, tokens: tokens)
        let scenario = Self.shapes()
        let st = try trainer.makeLearner(seed: 3, byteBudget: 200_000, generalTexts: SyntheticCorpus.generalText(count: 200, seed: 1))
        let val = scenario.domains.map(\.val)
        let o0 = try trainer.learn(st, domain: scenario.domains[0], validation: [val[0]], label: "1")
        #expect(o0.validationF1 == [1] && st.bestValidationF1 == [0])
        let o1 = try trainer.learn(st, domain: scenario.domains[1], validation: Array(val[0...1]), label: "2")
        #expect(o1.validationF1[0] == 1 && st.bestValidationF1[0] == 0, "a router of one domain routes everything to it: no reference")
        // the router trained through domain 1 decides the next score: computed here by hand
        let routed = trainer.predictor(st).predict(tokens.ids(val[0].map(\.text)), features: .cached)
        let expected = Double(routed.domains.filter { $0 == 0 }.count) / Double(val[0].count)
        let o2 = try trainer.learn(st, domain: scenario.domains[2], validation: Array(val[0...2]), label: "3")
        #expect(o2.validationF1[0] == expected && st.bestValidationF1[0] == expected)
        // a two-intent domain keeps its oracle F1 as the signal
        let oracle = Evaluator(predictor: RoutedPredictor(model: st.model, router: nil), tokens: tokens)
        #expect(o2.validationF1[1] == (try oracle.oracleF1(domain: 1, examples: val[1])))
    }

    /// Head evidence in rescoring does not depend on head size: uniform heads score 0 whatever
    /// their size, a one-intent head scores 0 (it cannot tell), a certain head 1; a hand value.
    @Test func headEvidenceIsSizeFree() {
        func ev(_ logits: [Float], _ r: Range<Int>? = nil) -> Float {
            RoutedPredictor.headEvidence(logits[...], classes: r ?? 0..<logits.count)
        }
        #expect(ev([5]) == 0)
        #expect(abs(ev([0.3, 0.3])) < 1e-6 && abs(ev([Float](repeating: -2, count: 10))) < 1e-6)
        #expect(abs(ev([60, 0, 0, 0, 0]) - 1) < 1e-6)
        #expect(abs(ev([log(3), 0, 0]) - Float(1 + log(0.6) / log(3.0))) < 1e-6)
        // a slice of a wider row: only the head's own classes count
        #expect(abs(ev([9, 9, log(3), 0, 0, 9], 2..<5) - Float(1 + log(0.6) / log(3.0))) < 1e-6)
        // the bias the old score had: log max softmax is 0 for a one-intent head, above any real
        // head's; with the normalised evidence a fairly sure 5-intent head beats it
        let sure5: [Float] = [4, 0, 0, 0, 0]
        let old5 = log(exp(Float(4)) / (exp(Float(4)) + 4))
        #expect(old5 < 0 && ev(sure5) > ev([1]))
    }

    /// Aggregates over a subset of domains, against hand-computed values.
    @Test func subsetAggregatesMatchHandValues() {
        let nan = Double.nan
        let m = EvalMatrix(domains: ["a", "b", "c"], f1: [[0.9, nan, nan], [0.8, 0.7, nan], [0.5, 0.6, 0.4]])
        #expect(abs(m.averageF1(over: [1, 2]) - 0.5) < 1e-12)
        #expect(abs(m.backwardTransfer(over: [1, 2]) - (0.6 - 0.7)) < 1e-12)
        #expect(abs(m.backwardTransfer(over: [0, 1]) - ((0.5 - 0.9) + (0.6 - 0.7)) / 2) < 1e-12)
        #expect(abs(m.forgetting(over: [0]) - (0.9 - 0.5)) < 1e-12)
        #expect(m.backwardTransfer(over: [2]).isNaN && m.averageF1(over: []).isNaN)
        #expect(abs(m.averageF1(over: [0, 1, 2]) - m.averageF1) < 1e-12 && abs(m.backwardTransfer(over: [0, 1, 2]) - m.backwardTransfer) < 1e-12)
    }
}
