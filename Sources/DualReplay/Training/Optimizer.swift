import CKernels
import Foundation

public enum LRDecay: String, Codable, CaseIterable, Sendable { case constant, linear, cosine }

/// AdamW and its schedule. Every field has a default; JSON configs may give any subset.
public struct OptimizerConfig: Codable, Equatable, Sendable {
    public var learningRate: Float = 1e-3
    public var beta1: Float = 0.9
    public var beta2: Float = 0.999
    public var epsilon: Float = 1e-8
    public var weightDecay: Float = 0.01
    /// Global gradient-norm clipping threshold; 0 disables it.
    public var clipNorm: Float = 1.0
    /// Linear warm-up over this fraction of a phase's steps, then `decay`.
    public var warmupFraction: Float = 0.06
    public var decay: LRDecay = .linear

    public init() {}

    /// Learning rate at `step` (0-based) of a phase of `total` steps.
    public func learningRate(step: Int, total: Int) -> Float {
        let total = max(total, 1)
        let warm = Int((warmupFraction * Float(total)).rounded(.up))
        if warm > 0 && step < warm { return learningRate * Float(step + 1) / Float(warm) }
        let progress = Float(step - warm) / Float(max(total - warm, 1))
        switch decay {
        case .constant: return learningRate
        case .linear: return learningRate * max(0, 1 - progress)
        case .cosine: return learningRate * 0.5 * (1 + cos(Float.pi * min(progress, 1)))
        }
    }
}

extension OptimizerConfig {
    enum CodingKeys: String, CodingKey, CaseIterable { case learningRate, beta1, beta2, epsilon, weightDecay, clipNorm, warmupFraction, decay }
    public init(from decoder: Decoder) throws {
        let c = try decoder.strictContainer(keyedBy: CodingKeys.self)
        let d = OptimizerConfig()
        learningRate = try c.decodeIfPresent(Float.self, forKey: .learningRate) ?? d.learningRate
        beta1 = try c.decodeIfPresent(Float.self, forKey: .beta1) ?? d.beta1
        beta2 = try c.decodeIfPresent(Float.self, forKey: .beta2) ?? d.beta2
        epsilon = try c.decodeIfPresent(Float.self, forKey: .epsilon) ?? d.epsilon
        weightDecay = try c.decodeIfPresent(Float.self, forKey: .weightDecay) ?? d.weightDecay
        clipNorm = try c.decodeIfPresent(Float.self, forKey: .clipNorm) ?? d.clipNorm
        warmupFraction = try c.decodeIfPresent(Float.self, forKey: .warmupFraction) ?? d.warmupFraction
        decay = try c.decodeChoice(LRDecay.self, forKey: .decay) ?? d.decay
    }
}

/// One AdamW update over the trainable segments of a parameter store (one flat loop each).
public struct AdamWStep {
    public let config: OptimizerConfig

    public init(config: OptimizerConfig) { self.config = config }

    /// Global gradient norm over `segments`, clipping applied in place; then the update at step
    /// `t` (1-based), segment i at `lr · scales[i]` (parameter groups; nil = all at `lr`). Returns the norm before clipping (NaN/Inf means the step was not applied).
    @discardableResult
    public func apply(_ store: ParameterStore, segments: [(offset: Int, count: Int, decay: Bool)], lr: Float, t: Int,
                      scales: [Float]? = nil) -> Float {
        var sq = 0.0
        for s in segments { sq += dr_sum_squares(store.grads.base + s.offset, Int64(s.count)) }
        let norm = Float(sq.squareRoot())
        guard norm.isFinite else { return norm }
        if config.clipNorm > 0 && norm > config.clipNorm {
            let scale = config.clipNorm / norm
            for s in segments { dr_scale(store.grads.base + s.offset, Int64(s.count), scale) }
        }
        for (i, s) in segments.enumerated() {
            let lr = lr * (scales?[i] ?? 1)
            dr_adamw_update(store.values.base + s.offset, store.grads.base + s.offset, store.moment1.base + s.offset,
                            store.moment2.base + s.offset, Int64(s.count), lr, config.beta1, config.beta2, config.epsilon,
                            s.decay ? config.weightDecay : 0, Int64(t))
        }
        return norm
    }
}
