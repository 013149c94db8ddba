import CKernels
import Foundation

/// The buffers of one forward/backward pass: activations, scratch, the loss buffers and the
/// kernels' pointer table. The model's main context writes gradients into the parameter store;
/// a worker context (data-parallel chunks, `ChunkedReduction`) writes them into a private arena
/// of the store's layout, so chunks can run on several threads at once.
final class PassContext {
    let workspace: EncoderWorkspace
    var extArena = FloatArena(count: 0)
    var fwdScratch = FloatArena(count: 0)
    var bwdScratch = FloatArena(count: 0)
    var xacts = dr_ext_acts()
    var pooledBuf = [Float](), logitsBuf = [Float]()
    var dlogits = [Float](), dpooled = [Float](), dtop = [Float](), losses = [Float](), targetsBuf = [Float]()
    /// nil: the store's own gradients (main context).
    private(set) var gradArena: FloatArena?
    /// The kernels' pointer table (values, then gradients; see `ContinualModel.rebuildViews`).
    private(set) var table: UnsafeMutablePointer<UnsafeMutablePointer<Float>?>
    private(set) var tableCount = 0
    var baseGrads = dr_bert_params()

    init(config: BertConfig, privateGradients: Bool) {
        workspace = EncoderWorkspace(config: config)
        gradArena = privateGradients ? FloatArena(count: 0) : nil
        table = .allocate(capacity: 1)
    }
    deinit { table.deallocate() }

    var ownsGradients: Bool { gradArena != nil }

    /// Base of the gradients this context writes: the store's, or its private arena.
    func gradBase(_ store: ParameterStore) -> UnsafeMutablePointer<Float> { gradArena?.base ?? store.grads.base }

    /// The context's pointer table from the model's: value pointers as they are; gradient
    /// pointers (at `gradientSlots`) moved from the store's arena into this context's.
    func rebuild(from ptrs: [UnsafeMutablePointer<Float>?], gradientSlots: Set<Int>, store: ParameterStore) {
        if let a = gradArena, a.count != store.count { gradArena = FloatArena(count: store.count) }
        table.deallocate()
        table = .allocate(capacity: max(ptrs.count, 1))
        tableCount = ptrs.count
        let from = store.grads.base, to = gradBase(store)
        for (i, p) in ptrs.enumerated() {
            if gradientSlots.contains(i), let p { table[i] = to + (p - from) } else { table[i] = ptrs[i] }
        }
    }

    /// This context's gradient of a store tensor.
    func grad(_ store: ParameterStore, _ name: String) -> UnsafeMutablePointer<Float> { gradBase(store) + store.tensor(name).offset }

    /// Runs `body` with this context as `model`'s context on the calling thread
    /// (`ContinualModel.current`), then unbinds it.
    func bind(to model: ContinualModel, _ body: () -> Void) {
        let d = Thread.current.threadDictionary
        let saved = d[Self.bindingKey]
        d[Self.bindingKey] = Binding(model: ObjectIdentifier(model), context: self)
        defer { d[Self.bindingKey] = saved }
        body()
    }

    /// The context bound to `model` on the calling thread, if any.
    static func bound(to model: ContinualModel) -> PassContext? {
        guard let b = Thread.current.threadDictionary[bindingKey] as? Binding, b.model == ObjectIdentifier(model) else { return nil }
        return b.context
    }

    private static let bindingKey = "DualReplay.PassContext.binding"
    private final class Binding {
        let model: ObjectIdentifier, context: PassContext
        init(model: ObjectIdentifier, context: PassContext) { self.model = model; self.context = context }
    }
}
