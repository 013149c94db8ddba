import Foundation
import Testing
@testable import DualReplay

/// Paired statistics over orderings. Reference values: scipy.stats 1.17 (`ttest_rel`, `t.sf`,
/// `binomtest`), and closed forms where they exist.
@Suite struct StatisticsTests {
    static func close(_ a: Double?, _ b: Double, _ tol: Double = 1e-9) -> Bool { a.map { abs($0 - b) <= tol * max(1, abs(b)) } ?? false }

    @Test func studentTTailMatchesClosedFormsAndReference() {
        // df = 1 is Cauchy: P(|T| ≥ 1) = 1/2; df = 2: P(|T| ≥ t) = 1 − t/√(2 + t²)
        #expect(Self.close(PairedStatistics.studentTTwoSidedP(1, df: 1), 0.5))
        #expect(Self.close(PairedStatistics.studentTTwoSidedP(2, df: 2), 1 - 2 / 6.0.squareRoot()))
        #expect(Self.close(PairedStatistics.studentTTwoSidedP(-2, df: 2), 1 - 2 / 6.0.squareRoot()))
        #expect(Self.close(PairedStatistics.studentTTwoSidedP(4.2426, df: 4), 0.013236029713755747, 1e-7))
        #expect(Self.close(PairedStatistics.studentTTwoSidedP(0.5, df: 30), 0.6207230048851272, 1e-7))
        #expect(Self.close(PairedStatistics.studentTTwoSidedP(12, df: 3), 0.0012450158007893362, 1e-7))
        #expect(PairedStatistics.studentTTwoSidedP(0, df: 4) == 1)
    }

    @Test func pairedTTestMatchesReference() throws {
        let r = try #require(PairedStatistics.pairedT([1, 2, 3, 4, 5.5]))
        #expect(r.df == 4 && Self.close(r.t, 3.9691432779197755) && Self.close(r.p, 0.016550539701028155, 1e-7))
        #expect(PairedStatistics.pairedT([0.3]) == nil)              // one ordering: no test
        #expect(PairedStatistics.pairedT([0.1, 0.1, 0.1]) == nil)    // no spread: no test
    }

    @Test func signTestIsExactBinomial() {
        #expect(PairedStatistics.signTestP(wins: 5, losses: 0) == 0.0625)          // 2/2⁵: the floor at 5 orderings
        #expect(PairedStatistics.signTestP(wins: 4, losses: 1) == 0.375)           // 2·(1 + 5)/32
        #expect(PairedStatistics.signTestP(wins: 9, losses: 1) == 0.021484375)     // 2·(1 + 10)/1024
        #expect(Self.close(PairedStatistics.signTestP(wins: 3, losses: 1), 0.625))
        #expect(PairedStatistics.signTestP(wins: 3, losses: 3) == 1)
        #expect(PairedStatistics.signTestP(wins: 0, losses: 0) == 1)
    }

    static func run(_ method: String, seed: UInt64, f1: Double) -> RunResult {
        let m = EvalMatrix(domains: ["a"], f1: [[f1]])
        return RunResult(method: method, kind: .dualReplay, orderingSeed: seed, domains: ["a"], routed: m, oracle: m, routedAccuracy: m,
                         oracleAccuracy: m, routerAccuracy: nil, validationF1: [], ledger: nil, bufferBytesUsed: nil, trainableParameters: 0,
                         parametersPerNewDomain: 0, trainSeconds: 0, evalSeconds: 0, trainExamplesPerSecond: 0)
    }

    /// Runs are paired by ordering seed, whatever their order; a seed only one side ran is left out.
    @Test func comparisonsPairByOrderingSeed() throws {
        let ours = [(3, 0.91), (0, 0.90), (1, 0.85), (2, 0.88), (7, 0.5)].map { Self.run("dr", seed: UInt64($0.0), f1: $0.1) }
        let base = [(0, 0.86), (1, 0.86), (2, 0.80), (3, 0.85)].map { Self.run("lr", seed: UInt64($0.0), f1: $0.1) }
        let c = try #require(PairedComparison.compare(ours, against: base).first { $0.metric == .routedAverageF1 })
        #expect(c.method == "dr" && c.baseline == "lr" && Set(c.orderingSeeds) == [0, 1, 2, 3])
        #expect(c.wins == 3 && c.losses == 1 && c.ties == 0)
        // scipy.stats.ttest_rel([.90, .85, .88, .91], [.86, .86, .80, .85])
        #expect(Self.close(c.t, 2.200812445210726, 1e-7) && Self.close(c.tTestP, 0.11508454301580362, 1e-7))
        #expect(Self.close(c.meanDifference, 0.0425) && Self.close(c.signTestP, 0.625))
    }

    /// The runner compares every Dual-Replay method with every other method, and the report shows it.
    @Test func runnerComparesDualReplayWithEachBaseline() throws {
        let runs = [Self.run("dr", seed: 0, f1: 0.9), Self.run("dr", seed: 1, f1: 0.8), Self.run("lr", seed: 0, f1: 0.7),
                    Self.run("lr", seed: 1, f1: 0.75), Self.run("der", seed: 0, f1: 0.6), Self.run("der", seed: 1, f1: 0.65)]
        let cs = try #require(ExperimentRunner.comparisons(["dr", "lr", "der"], kinds: [.dualReplay, .loraReplay, .der], runs: runs))
        #expect(Set(cs.map(\.baseline)) == ["lr", "der"] && cs.allSatisfy { $0.method == "dr" })
        #expect(cs.count == 2 * PairedComparison.Metric.allCases.count)
    }
}
