/// One rule of a method about what trains when a domain arrives and how a step's gradients are
/// shaped. A method is its `ModelSpec` plus a list of these (`MethodPolicies.make`), applied in order.
public protocol TrainingPolicy {
    /// Domain `k` was just added to the model (its gate rows, head rows and router output exist).
    func domainAdded(_ m: ContinualModel, domain k: Int, rng: inout SplitMix64)
    /// The gradients of a step of domain `k` are complete; the optimizer update follows.
    func gradientsReady(_ m: ContinualModel, domain k: Int)
}

extension TrainingPolicy {
    public func domainAdded(_ m: ContinualModel, domain k: Int, rng: inout SplitMix64) {}
    public func gradientsReady(_ m: ContinualModel, domain k: Int) {}
}

/// A new domain's gate starts as a random channel mask (a `fraction` of the bottleneck at 1, the
/// rest at 0): domains start on partly disjoint channels. Draws from the training generator.
public struct GateMaskInit: TrainingPolicy {
    public var fraction: Float
    public func domainAdded(_ m: ContinualModel, domain k: Int, rng: inout SplitMix64) {
        let R = m.spec.bottleneck
        let on = (0..<R).map { _ in rng.nextUnit() < fraction }
        for slot in m.adapterLayers.indices {
            let g = m.store.value(TensorName.gates(slot)) + k * R
            for r in 0..<R { g[r] = on[r] ? 1 : 0 }
        }
    }
}

/// Earlier domains' gate rows stop training when their domain ends (`frozen`), or all train.
public struct GateRows: TrainingPolicy {
    public var freezeOld: Bool
    public func domainAdded(_ m: ContinualModel, domain k: Int, rng: inout SplitMix64) {
        for slot in m.adapterLayers.indices { m.store.setTrainableRows(TensorName.gates(slot), freezeOld ? k..<(k + 1) : nil) }
    }
}

/// Only the newest domain's head rows train (earlier heads are frozen, not trained by replay).
public struct HeadFreezing: TrainingPolicy {
    public func domainAdded(_ m: ContinualModel, domain k: Int, rng: inout SplitMix64) {
        let r = m.domains[k].classRange
        m.store.setTrainableRows(TensorName.headWeight, r)
        m.store.setTrainableRows(TensorName.headBias, r)
    }
}

/// The shared adapter learns at full rate on the first domain and at `scale` after (0 = frozen).
public struct SharedAdapterRate: TrainingPolicy {
    public var scale: Float
    public func domainAdded(_ m: ContinualModel, domain k: Int, rng: inout SplitMix64) {
        let s = k == 0 ? 1 : scale
        m.sharedLRScale = s
        if s == 0 { m.store.setTrainable(false) { TensorName.isSharedAdapter($0.name) } }
    }
}

/// HAT-like protection: bottleneck channels earlier domains use get their gradient scaled by
/// 1 − strength · max_old |gate|.
public struct ChannelProtection: TrainingPolicy {
    public var strength: Float
    public func gradientsReady(_ m: ContinualModel, domain k: Int) {
        guard strength > 0, k > 0 else { return }
        let R = m.spec.bottleneck, C = m.config.hidden
        for slot in m.adapterLayers.indices {
            let g = m.store.value(TensorName.gates(slot))
            var scale = [Float](repeating: 1, count: R)
            for r in 0..<R {
                var used: Float = 0
                for d in 0..<k { used = max(used, min(1, abs(g[d * R + r]))) }
                scale[r] = 1 - strength * used
            }
            let dDown = m.store.grad(TensorName.adapter(slot, "down.w")), dDownB = m.store.grad(TensorName.adapter(slot, "down.b"))
            let dUp = m.store.grad(TensorName.adapter(slot, "up.w"))
            for r in 0..<R {
                dDownB[r] *= scale[r]
                for c in 0..<C { dDown[r * C + c] *= scale[r]; dUp[c * R + r] *= scale[r] }
            }
        }
    }
}

public enum MethodPolicies {
    /// The policies of a resolved method, in the order they apply.
    public static func make(_ s: MethodSettings) -> [TrainingPolicy] {
        var out: [TrainingPolicy] = []
        if s.gateInit == .mask { out.append(GateMaskInit(fraction: s.gateMaskFraction)) }
        out.append(GateRows(freezeOld: s.freezeOldGates))
        if s.freezeOldHeads { out.append(HeadFreezing()) }
        out.append(SharedAdapterRate(scale: s.sharedLRScale))
        if s.protectOldChannels > 0 { out.append(ChannelProtection(strength: s.protectOldChannels)) }
        return out
    }
}
