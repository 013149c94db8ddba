import Foundation
import Testing
@testable import DualReplay

private func close(_ a: Double, _ b: Double, _ tol: Double = 1e-12) -> Bool { abs(a - b) <= tol * max(1, abs(a), abs(b)) }

/// R[i][j] (0-based): row i = after training through domain i.
private let matrixR: [[Double]] = [
    [0.80, .nan, .nan],
    [0.90, 0.80, .nan],
    [0.60, 0.75, 0.85],
]

@Suite("MetricsTests")
struct MetricsTests {
    @Test func macroF1ByHand() {
        // Domain classes 10, 11, 12; one prediction (99) belongs to another domain.
        let labels: [Int32] = [10, 10, 11, 11, 12, 12]
        let predictions: [Int32] = [10, 11, 11, 11, 12, 99]
        // class 10: TP 1, FP 0, FN 1 -> 2/3
        // class 11: TP 2, FP 1, FN 0 -> 4/5
        // class 12: TP 1, FP 0, FN 1 (the 99) -> 2/3
        let expected = (2.0 / 3 + 0.8 + 2.0 / 3) / 3
        #expect(close(macroF1(predictions: predictions, labels: labels, classes: [10, 11, 12]), expected))
        // A class with no support and no predictions is left out (sklearn with labels = classes present).
        #expect(close(macroF1(predictions: predictions, labels: labels, classes: [10, 11, 12, 13]), expected))
        // A class with predictions but no support counts with F1 = 0.
        let withFalseAlarm: [Int32] = [13, 11, 11, 11, 12, 99]
        // class 10: TP 0, FN 2 -> 0; class 11: 4/5; class 12: 2/3; class 13: TP 0, FP 1 -> 0
        #expect(close(macroF1(predictions: withFalseAlarm, labels: labels, classes: [10, 11, 12, 13]), (0.8 + 2.0 / 3) / 4))
        // Perfect and empty.
        #expect(macroF1(predictions: labels, labels: labels, classes: [10, 11, 12]) == 1)
        #expect(macroF1(predictions: [], labels: [], classes: [10, 11]) == 0)
    }

    @Test func accuracyAndExactMatch() {
        #expect(close(accuracy(predictions: [10, 11, 11, 11, 12, 99], labels: [10, 10, 11, 11, 12, 12]), 4.0 / 6))
        #expect(accuracy(predictions: [], labels: []) == 0)
        #expect(exactMatchAccuracy(predictions: [[1, 2], [3], [4, 5]], labels: [[2, 1], [3, 4], [4, 5]]) == 2.0 / 3)
    }

    @Test func continualMeasuresOnAHandMatrix() {
        let m = EvalMatrix(domains: ["a", "b", "c"], f1: matrixR)
        // ACC = (0.60 + 0.75 + 0.85) / 3
        #expect(close(m.averageF1, 2.2 / 3))
        // BWT = ((0.60 − 0.80) + (0.75 − 0.80)) / 2 = −0.125
        #expect(close(m.backwardTransfer, -0.125))
        // Forgetting: j=0: max(0.80, 0.90) − 0.60 = 0.30; j=1: 0.80 − 0.75 = 0.05 -> 0.175
        #expect(close(m.forgetting, 0.175))
        // FWT vs single-domain training: ((0.80 − 0.70) + (0.85 − 0.90)) / 2 = 0.025
        #expect(close(m.forwardTransfer(single: [0.85, 0.70, 0.90]), 0.025))
        #expect(close(m.forwardTransfer(singleByDomain: ["a": 0.85, "b": 0.70, "c": 0.90]), 0.025))
        // Intransigence: ((0.95 − 0.80) + (0.90 − 0.80) + (0.90 − 0.85)) / 3 = 0.1
        #expect(close(m.intransigence(joint: [0.95, 0.90, 0.90]), 0.1))
        #expect(close(m.intransigence(jointByDomain: ["c": 0.90, "a": 0.95, "b": 0.90]), 0.1))
    }

    @Test func secondHandMatrixWithoutForgetting() {
        // Learning never hurts: BWT ≥ 0, forgetting ≤ 0.
        let m = EvalMatrix(domains: ["x", "y", "z"], f1: [
            [0.5, .nan, .nan],
            [0.6, 0.7, .nan],
            [0.7, 0.7, 0.9],
        ])
        #expect(close(m.backwardTransfer, ((0.7 - 0.5) + (0.7 - 0.7)) / 2))
        #expect(close(m.forgetting, ((0.6 - 0.7) + (0.7 - 0.7)) / 2))
        #expect(close(m.averageF1, 2.3 / 3))
        #expect(close(m.intransigence(joint: [0.5, 0.7, 0.9]), 0))
        let one = EvalMatrix(domains: ["only"], f1: [[0.9]])
        #expect(one.backwardTransfer == 0 && one.forgetting == 0 && one.forwardTransfer(single: [0.8]) == 0)
        #expect(one.averageF1 == 0.9)
    }

    @Test func matrixFillingAndCodable() throws {
        var m = EvalMatrix(domains: ["a", "b"])
        #expect(m.f1.flatMap { $0 }.allSatisfy { $0.isNaN })
        m[afterTraining: 0, domain: 0] = 0.9
        m[afterTraining: 1, domain: 0] = 0.8
        m[afterTraining: 1, domain: 1] = 0.7
        let data = try JSONEncoder().encode(m)
        #expect(String(decoding: data, as: UTF8.self).contains("null"))
        let back = try JSONDecoder().decode(EvalMatrix.self, from: data)
        #expect(back == m)
        #expect(back.f1[0][1].isNaN && back.f1[1][0] == 0.8)
        #expect(close(back.backwardTransfer, -0.1))
    }

    @Test func meanStdAndAggregation() {
        let s = MeanStd([1, 2, 3, 4])
        #expect(s.mean == 2.5 && close(s.std, (5.0 / 3).squareRoot()) && s.count == 4)
        #expect(MeanStd([3]).std == 0)
        #expect(MeanStd([1, .nan, 3]).count == 2)

        // Two orderings of the same domains; references are looked up by name.
        let first = EvalMatrix(domains: ["a", "b", "c"], f1: matrixR)
        let second = EvalMatrix(domains: ["c", "a", "b"], f1: [
            [0.90, .nan, .nan],
            [0.80, 0.85, .nan],
            [0.70, 0.75, 0.80],
        ])
        let single = ["a": 0.85, "b": 0.70, "c": 0.90]
        let joint = ["a": 0.95, "b": 0.90, "c": 0.90]
        let summary = EvalSummary.aggregate([first, second], single: single, joint: joint)
        #expect(summary.runs == 2)
        // second: ACC 0.75; BWT ((0.70 − 0.90) + (0.75 − 0.85)) / 2 = −0.15; forgetting 0.15;
        // FWT ((0.85 − 0.85) + (0.80 − 0.70)) / 2 = 0.05; intransigence ((0.90−0.90)+(0.95−0.85)+(0.90−0.80)) / 3
        #expect(close(summary.averageF1.mean, (2.2 / 3 + 0.75) / 2))
        #expect(close(summary.backwardTransfer.mean, (-0.125 - 0.15) / 2))
        #expect(close(summary.forgetting.mean, (0.175 + 0.15) / 2))
        #expect(close(summary.forwardTransfer!.mean, (0.025 + 0.05) / 2))
        #expect(close(summary.intransigence!.mean, (0.1 + 0.2 / 3) / 2))
        #expect(close(summary.backwardTransfer.std, abs(-0.125 + 0.15) / 2.0.squareRoot()))
        #expect(EvalSummary.aggregate([first]).forwardTransfer == nil)
    }
}
