import CKernels

/// Softmax regression on fixed features, through the kernels: logits = x·Wᵀ + b
/// (`dr_matmul_forward`), mean cross-entropy (`dr_softmax_xent_forward_backward`), its gradient
/// (`dr_matmul_backward`) and Adam (`dr_adamw_update`, no decoupled decay). The one fit behind the
/// linear probe (fresh weights, mini-batches, L2) and head realignment (a head's current
/// weights, full batch).
public struct SoftmaxRegression {
    public struct Config: Sendable {
        /// Passes over the rows; with `batchSize` nil each pass is one full-batch step.
        public var epochs: Int
        /// Rows per Adam step, reshuffled each epoch (nil = every row, in order, no shuffle).
        public var batchSize: Int?
        public var learningRate: Float
        /// L2 penalty on the weights (not the bias): the loss is mean cross-entropy + l2/2·‖W‖².
        public var l2: Float = 0
        public var beta1: Float = 0.9, beta2: Float = 0.999, epsilon: Float = 1e-8
        /// Seeds the shuffle.
        public var seed: UInt64 = 0

        public init(epochs: Int, batchSize: Int?, learningRate: Float, l2: Float = 0, seed: UInt64 = 0) {
            self.epochs = epochs
            self.batchSize = batchSize
            self.learningRate = learningRate
            self.l2 = l2
            self.seed = seed
        }
    }

    /// Fits `weight` (classes, dim) and `bias` (classes) in place, from their current values, on
    /// `features` (rows, dim) with `labels` in 0..<classes. Adam moments start at zero.
    public static func fit(features x: [Float], labels: [Int32], dim C: Int, classes n: Int,
                           weight W: UnsafeMutablePointer<Float>, bias b: UnsafeMutablePointer<Float>, config: Config) {
        let N = labels.count
        precondition(x.count == N * C, "SoftmaxRegression: \(x.count) feature values for \(N) rows of \(C)")
        guard N > 0, config.epochs > 0 else { return }
        let B = min(config.batchSize ?? N, N)
        var mW = [Float](repeating: 0, count: n * C), vW = mW, gW = mW, mb = [Float](repeating: 0, count: n), vb = mb, gb = mb
        var logits = [Float](repeating: 0, count: B * n), dlogits = logits, losses = [Float](repeating: 0, count: B)
        var xb = config.batchSize == nil ? x : [Float](repeating: 0, count: B * C), yb = labels
        var order = Array(0..<N)
        var rng = SplitMix64(seed: config.seed)
        var t = 0
        func step(rows: Int) {
            t += 1
            // logits = xb·Wᵀ + b; the backward adds, so clear the gradients first
            dr_matmul_forward(&logits, xb, W, b, Int64(rows), Int64(C), Int64(n))
            _ = dr_softmax_xent_forward_backward(&losses, &dlogits, nil, logits, yb, nil, nil, nil, Int64(rows), Int64(n))
            for i in gW.indices { gW[i] = 0 }
            for c in 0..<n { gb[c] = 0 }
            dr_matmul_backward(nil, &gW, &gb, dlogits, xb, W, Int64(rows), Int64(C), Int64(n))
            if config.l2 > 0 { for i in gW.indices { gW[i] += config.l2 * W[i] } }
            dr_adamw_update(W, gW, &mW, &vW, Int64(n * C), config.learningRate, config.beta1, config.beta2, config.epsilon, 0, Int64(t))
            dr_adamw_update(b, gb, &mb, &vb, Int64(n), config.learningRate, config.beta1, config.beta2, config.epsilon, 0, Int64(t))
        }
        for _ in 0..<config.epochs {
            guard config.batchSize != nil else { step(rows: N); continue }
            // Fisher-Yates written out, so the order does not depend on the standard library's shuffle
            for i in stride(from: N - 1, to: 0, by: -1) { order.swapAt(i, Int(rng.next() % UInt64(i + 1))) }
            for start in stride(from: 0, to: N, by: B) {
                let rows = min(B, N - start)
                x.withUnsafeBufferPointer { src in
                    xb.withUnsafeMutableBufferPointer { dst in
                        for r in 0..<rows { (dst.baseAddress! + r * C).update(from: src.baseAddress! + order[start + r] * C, count: C) }
                    }
                }
                for r in 0..<rows { yb[r] = labels[order[start + r]] }
                step(rows: rows)
            }
        }
    }
}
