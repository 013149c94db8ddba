/// The names of the trainable tensors in the parameter store, written once: the model builds
/// them, the trainer's policies, the state layer, export and the tests look them up here.
public enum TensorName {
    /// Shared bottleneck of adapter slot `s` (`field`: down.w, down.b, up.w, up.b) and its
    /// per-domain gate table (K, R).
    public static func adapter(_ s: Int, _ field: String) -> String { "adapter.\(s).\(field)" }
    public static func gates(_ s: Int) -> String { "adapter.\(s).gates" }
    public static let adapterFields = ["down.w", "down.b", "up.w", "up.b"]
    /// LoRA set `k`, layer `l`, projection `part` (q or v), matrix `which` (A or B).
    public static func lora(_ k: Int, _ l: Int, _ part: String, _ which: String) -> String { "lora.\(k).\(l).\(part).\(which)" }
    public static let loraParts = ["q", "v"]
    /// The heads: one linear layer over every seen class, (V, C) and (V); domain k owns the
    /// rows of its class range.
    public static let headWeight = "head.w"
    public static let headBias = "head.b"
    /// The router MLP and its intent prototypes (V, C).
    public static let routerW1 = "router.w1", routerB1 = "router.b1", routerW2 = "router.w2", routerB2 = "router.b2"
    public static let routerPrototypes = "router.proto"
    /// Every base weight (full fine-tune).
    public static let base = "base"

    /// The shared adapter's projections (not its per-domain gate table).
    public static func isSharedAdapter(_ name: String) -> Bool {
        name.hasPrefix("adapter.") && adapterFields.contains { name.hasSuffix("." + $0) }
    }
}
