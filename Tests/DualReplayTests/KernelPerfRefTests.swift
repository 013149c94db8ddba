import CKernels
import Foundation
import Testing

/// The performance paths of the encoder kernels against plain Double references, on the sizes
/// that select them: attention's register-tiled path (head size a multiple of 16, T <= 64) and its
/// sgemm path (longer sequences), and LayerNorm's 16-lane row sums (C a multiple of 16 and not).
/// Error measure: |a - r| / max(1, |a|, |r|).
@Suite struct KernelPerfRefTests {
    static func relErr(_ a: Double, _ r: Double) -> Double { abs(a - r) / max(1, abs(a), abs(r)) }

    /// Attention forward and backward in Double: out, probs and dqkv for upstream gradient dout.
    static func attentionReference(qkv: [Float], dout: [Float], cu: [Int64], C: Int, NH: Int)
        -> (out: [Double], probs: [Double], dqkv: [Double]) {
        let HS = C / NH, C3 = 3 * C, B = cu.count - 1, N = Int(cu[B])
        let scale = 1 / Double(HS).squareRoot()
        var out = [Double](repeating: 0, count: N * C), dqkv = [Double](repeating: 0, count: N * C3)
        var probs: [Double] = []
        func q(_ t: Int, _ h: Int, _ d: Int) -> Double { Double(qkv[t * C3 + h * HS + d]) }
        func k(_ t: Int, _ h: Int, _ d: Int) -> Double { Double(qkv[t * C3 + C + h * HS + d]) }
        func v(_ t: Int, _ h: Int, _ d: Int) -> Double { Double(qkv[t * C3 + 2 * C + h * HS + d]) }
        for b in 0..<B {
            let t0 = Int(cu[b]), T = Int(cu[b + 1]) - t0
            for h in 0..<NH {
                var P = [Double](repeating: 0, count: T * T)
                for i in 0..<T {
                    var s = (0..<T).map { j in (0..<HS).reduce(0.0) { $0 + q(t0 + i, h, $1) * k(t0 + j, h, $1) } * scale }
                    let m = s.max()!
                    s = s.map { exp($0 - m) }
                    let z = s.reduce(0, +)
                    for j in 0..<T { P[i * T + j] = s[j] / z }
                    for d in 0..<HS { out[(t0 + i) * C + h * HS + d] = (0..<T).reduce(0.0) { $0 + P[i * T + $1] * v(t0 + $1, h, d) } }
                }
                probs += P
                for i in 0..<T {
                    let dy = (0..<HS).map { Double(dout[(t0 + i) * C + h * HS + $0]) }
                    let dp = (0..<T).map { j in (0..<HS).reduce(0.0) { $0 + dy[$1] * v(t0 + j, h, $1) } }
                    let dot = (0..<T).reduce(0.0) { $0 + P[i * T + $1] * dp[$1] }
                    for j in 0..<T {
                        let ds = P[i * T + j] * (dp[j] - dot) * scale
                        for d in 0..<HS {
                            dqkv[(t0 + i) * C3 + h * HS + d] += ds * k(t0 + j, h, d)
                            dqkv[(t0 + j) * C3 + C + h * HS + d] += ds * q(t0 + i, h, d)
                            dqkv[(t0 + j) * C3 + 2 * C + h * HS + d] += P[i * T + j] * dy[d]
                        }
                    }
                }
            }
        }
        return (out, probs, dqkv)
    }

    static func worst(_ a: [Float], _ r: [Double]) -> Double {
        precondition(a.count == r.count)
        var w = 0.0
        for i in a.indices { w = max(w, relErr(Double(a[i]), r[i])) }
        return w
    }

    func checkAttention(lengths: [Int], C: Int, NH: Int, seed: UInt64, sourceLocation: SourceLocation = #_sourceLocation) {
        var rng = SeededRandom(seed: seed)
        var cu: [Int64] = [0]
        for l in lengths { cu.append(cu.last! + Int64(l)) }
        let N = Int(cu.last!), B = lengths.count
        let qkv = rng.floats(N * 3 * C, -2, 2), dout = rng.floats(N * C)
        let PS = Int(dr_attention_prob_size(cu, Int64(B), Int64(NH)))
        var out = [Float](repeating: 0, count: N * C), probs = [Float](repeating: 0, count: PS)
        dr_attention_forward(&out, &probs, qkv, cu, Int64(B), Int64(C), Int64(NH))
        // backward adds: start from a known non-zero gradient
        let base = rng.floats(N * 3 * C)
        var dqkv = base, scratch = [Float](repeating: 0, count: max(1, lengths.max()!))
        dr_attention_backward(&dqkv, &scratch, dout, qkv, probs, cu, Int64(B), Int64(C), Int64(NH))
        let ref = Self.attentionReference(qkv: qkv, dout: dout, cu: cu, C: C, NH: NH)
        let eOut = Self.worst(out, ref.out), eProbs = Self.worst(probs, ref.probs)
        let eGrad = Self.worst(zip(dqkv, base).map { $0 - $1 }, ref.dqkv)
        #expect(eOut < 2e-5, "attention out, lengths \(lengths): \(eOut)", sourceLocation: sourceLocation)
        #expect(eProbs < 2e-6, "attention probs, lengths \(lengths): \(eProbs)", sourceLocation: sourceLocation)
        #expect(eGrad < 2e-5, "attention dqkv, lengths \(lengths): \(eGrad)", sourceLocation: sourceLocation)
    }

    @Test func attentionTiledPathMatchesReference() {
        // HS = 32: every T from 1 to 20 (row blocks of 4 and their remainders, 16-column tiles
        // and their padding), then the fast path's limit
        checkAttention(lengths: Array(1...20), C: 64, NH: 2, seed: 11)
        checkAttention(lengths: [33, 48, 63, 64, 2], C: 64, NH: 2, seed: 12)
        // HS = 64 (BERT-base's head size) and HS = 16
        checkAttention(lengths: [7, 13, 16, 17, 40], C: 128, NH: 2, seed: 13)
        checkAttention(lengths: [5, 11, 29], C: 48, NH: 3, seed: 14)
    }

    @Test func attentionLongAndOddHeadPathsMatchReference() {
        // T > 64: sgemm forward, plain backward; HS = 12 (not a multiple of 16): same
        checkAttention(lengths: [65, 3, 100], C: 64, NH: 2, seed: 21)
        checkAttention(lengths: [9, 1, 30], C: 36, NH: 3, seed: 22)
    }

    @Test func layerNormLanesMatchReference() {
        for (C, seed) in [(384, UInt64(31)), (38, 32), (16, 33), (5, 34)] {
            var rng = SeededRandom(seed: seed)
            let N = 7
            // a large common offset and one outlier channel, as in BERT's residual stream
            let x = (0..<(N * C)).map { i in rng.float(-2, 2) + 6 + (i % C == 3 ? 40 : 0) }
            let w = rng.floats(C, 0.5, 1.5), b = rng.floats(C), dy = rng.floats(N * C)
            let eps: Float = 1e-12
            var out = [Float](repeating: 0, count: N * C), mean = [Float](repeating: 0, count: N), rstd = mean
            dr_layernorm_forward(&out, &mean, &rstd, x, w, b, Int64(N), Int64(C), eps)
            let dx0 = rng.floats(N * C)
            var dx = dx0, dw = [Float](repeating: 0, count: C), db = dw
            dr_layernorm_backward(&dx, &dw, &db, dy, x, w, mean, rstd, Int64(N), Int64(C))
            var eOut = 0.0, eDx = 0.0, eDw = 0.0, eDb = 0.0
            var rdw = [Double](repeating: 0, count: C), rdb = rdw
            for i in 0..<N {
                let row = (0..<C).map { Double(x[i * C + $0]) }
                let m = row.reduce(0, +) / Double(C)
                let v = row.reduce(0) { $0 + ($1 - m) * ($1 - m) } / Double(C)
                let s = 1 / (v + Double(eps)).squareRoot()
                let xh = row.map { ($0 - m) * s }
                let dn = (0..<C).map { Double(dy[i * C + $0]) * Double(w[$0]) }
                let a = dn.reduce(0, +) / Double(C)
                let c = (0..<C).reduce(0.0) { $0 + dn[$1] * xh[$1] } / Double(C)
                for j in 0..<C {
                    eOut = max(eOut, Self.relErr(Double(out[i * C + j]), xh[j] * Double(w[j]) + Double(b[j])))
                    eDx = max(eDx, Self.relErr(Double(dx[i * C + j] - dx0[i * C + j]), s * (dn[j] - a - xh[j] * c)))
                    rdw[j] += Double(dy[i * C + j]) * xh[j]
                    rdb[j] += Double(dy[i * C + j])
                }
            }
            for j in 0..<C { eDw = max(eDw, Self.relErr(Double(dw[j]), rdw[j])); eDb = max(eDb, Self.relErr(Double(db[j]), rdb[j])) }
            #expect(eOut < 1e-5, "layernorm out, C=\(C): \(eOut)")
            #expect(eDx < 1e-5, "layernorm dx, C=\(C): \(eDx)")
            #expect(eDw < 1e-5 && eDb < 1e-5, "layernorm dw/db, C=\(C): \(eDw) \(eDb)")
        }
    }
}
