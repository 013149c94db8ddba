// The red lines a continual-learning team watches, in one place: `onboard` flags them and the
// HTML report draws them.
import Foundation

public enum RedLines {
    /// Backward transfer of the routed F1 matrix below this (0..1 scale: −5 points) is forgetting.
    public static let backwardTransferLimit = -0.05
    /// A head-vs-tail F1 gap above this (5 points) means the small domains are starved.
    public static let headTailGapLimit = 0.05

    /// Mean F1 of the larger half of the domains by training-set size minus that of the smaller
    /// half (ties in size keep the given order). nil with fewer than two domains, or when the two
    /// halves do not differ in size. `f1` and `trainExamples` are indexed alike.
    public static func headTailGap(f1: [Double], trainExamples: [Int]) -> Double? {
        precondition(f1.count == trainExamples.count, "headTailGap: \(f1.count) scores for \(trainExamples.count) domains")
        let bySize = trainExamples.indices.sorted { trainExamples[$0] > trainExamples[$1] }
        let half = bySize.count / 2
        guard half > 0 else { return nil }
        let head = bySize.prefix(half), tail = bySize.suffix(half)
        guard trainExamples[head.last!] > trainExamples[tail.first!] else { return nil }
        let mean = { (ix: ArraySlice<Int>) in ix.reduce(0.0) { $0 + f1[$1] } / Double(ix.count) }
        return mean(head) - mean(tail)
    }
}
