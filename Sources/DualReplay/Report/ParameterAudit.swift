// The report's parameter audit: trainable parameters against the number of domains K, projected
// to K = 60, and the training memory they imply on the 22M-parameter base and on a 7B base.
import Foundation

public enum ParameterAudit {
    /// How far the projection goes.
    public static let projectedDomains = 60
    /// The memory budget a 7B deployment must fit in: 16 GB (10⁹ bytes).
    public static let memoryBudgetBytes = 16e9
    /// A 7B decoder's shape (Llama-2-7B: 32 layers of width 4096, 6.74 B weights).
    public static let base7B = BaseModelShape(layers: 32, hidden: 4096, parameters: 6_738_415_616)
    /// all-MiniLM-L6-v2, the default base (6 layers of width 384, 22.6 M weights): assumed for
    /// results written before the base model's shape was recorded.
    public static let defaultBase = BaseModelShape(layers: 6, hidden: 384, parameters: 22_565_376)
    /// Bytes per frozen base weight: fp32 as this code runs the small base, bf16 for the 7B one
    /// (whose fp32 weights alone, 27 GB, would not fit the budget).
    public static func bytesPerFrozenWeight(_ base: BaseModelShape) -> Double { base.parameters > 1_000_000_000 ? 2 : 4 }

    /// Trainable parameters of method `s` at `domains` domains of `intentsPerDomain` intents each on
    /// `base`: `MethodSettings.estimatedTrainingBytes` (16 B per parameter: value, gradient and the
    /// two AdamW moments) divided by 16, without the router's intent prototypes (frozen
    /// statistics, not trained). The router's MLP is counted for every method, as the parameter
    /// store holds it (a method without routing leaves it unused).
    public static func trainableParameters(_ s: MethodSettings, base: BaseModelShape, domains: Int, intentsPerDomain: Double) -> Int {
        var t = s
        t.spec.routerPrototypes = nil
        let intents = Int((Double(domains) * intentsPerDomain).rounded())
        let parts = t.estimatedTrainingBytes(hidden: base.hidden, layers: base.layers, intents: intents, domains: domains,
                                             baseParameters: base.parameters)
        return parts.reduce(0) { $0 + $1.bytes / 16 }
    }

    /// A LoRA per domain (rank `rank` on query and value of every layer, earlier sets frozen) with
    /// a head per domain: the usual way to add domains without forgetting.
    public static func perDomainLoRA(rank: Int) -> MethodSettings? {
        var m = MethodConfig(kind: .olora)
        m.name = "per-domain LoRA (r=\(rank))"
        m.lora.rank = rank
        m.router.enabled = false
        return try? MethodSettings.resolve(m, training: TrainingDefaults())
    }

    /// Training memory in bytes: the frozen base weights (`bytesPerFrozenWeight`; none when the
    /// base itself trains) plus 16 B per trainable parameter. Activations and the replay buffer
    /// are not counted.
    public static func memoryBytes(trainable: Int, base: BaseModelShape, baseTrains: Bool) -> Double {
        (baseTrains ? 0 : Double(base.parameters) * bytesPerFrozenWeight(base)) + 16 * Double(trainable)
    }
}

extension BaseModelShape {
    /// A BERT encoder's weight count from its shape, for a state (which records layers, width and
    /// vocabulary but not the count): embeddings (vocabulary, 512 positions, 2 types, LayerNorm) and
    /// per layer attention (4 C² + 4 C), a 4C feed-forward (8 C² + 5 C) and two LayerNorms (4 C).
    public static func estimatedBERT(layers: Int, hidden c: Int, vocabSize: Int) -> BaseModelShape {
        let embeddings = (vocabSize + 512 + 2) * c + 2 * c
        let layer = 12 * c * c + 13 * c
        return BaseModelShape(layers: layers, hidden: c, parameters: embeddings + layers * layer)
    }
}
