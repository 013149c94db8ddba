import CKernels
import Foundation

public enum ModelError: LocalizedError, Equatable {
    case missingFile(String)
    case shapeMismatch(file: String, tensor: String, expected: [Int], found: [Int])
    case unsupported(String)

    public var errorDescription: String? {
        switch self {
        case .missingFile(let p): return "model file not found: \(p) (run `make setup` for the default model)"
        case let .shapeMismatch(file, tensor, expected, found):
            return "\(file): tensor \(tensor) has shape \(found), the config implies \(expected)"
        case .unsupported(let s): return s
        }
    }
}

/// A heap array of floats owned by Swift, handed to C kernels (llm.c's single allocation).
public final class FloatArena {
    public let count: Int
    /// Raw storage for the kernels (internal: the public API hands out arrays and closures).
    let base: UnsafeMutablePointer<Float>

    public init(count: Int) {
        self.count = count
        base = .allocate(capacity: max(count, 1))
        base.initialize(repeating: 0, count: max(count, 1))
    }
    deinit { base.deallocate() }

    public func zero() { base.update(repeating: 0, count: count) }
    var buffer: UnsafeMutableBufferPointer<Float> { UnsafeMutableBufferPointer(start: base, count: count) }
    /// Calls `body` with the storage (valid only inside `body`; for kernel benchmarks and tests).
    public func withUnsafeMutablePointer<R>(_ body: (UnsafeMutablePointer<Float>) throws -> R) rethrows -> R { try body(base) }
}

extension BertConfig {
    /// The C view of the configuration.
    var kernelConfig: dr_bert_config {
        dr_bert_config(n_layers: Int64(layers), hidden: Int64(hidden), n_heads: Int64(heads),
                       intermediate: Int64(intermediate), vocab: Int64(vocabSize),
                       max_positions: Int64(maxPositions), type_vocab: Int64(typeVocabSize),
                       ln_eps: layerNormEps)
    }
}

/// The frozen encoder's parameters in ONE arena, laid out as `dr_bert_params` describes, so that
/// gradients and optimizer moments of a full fine-tune can share the layout.
public final class BertWeights {
    public let config: BertConfig
    public let arena: FloatArena
    var params: dr_bert_params
    /// Sizes (in floats) of the 17 parameter tensors, in `dr_bert_params` order.
    public let tensorSizes: [Int]

    /// Names of the arena's tensors, in `dr_bert_params` order (for audits and checkpoints).
    public static let tensorNames = [
        "wte", "wpe", "wtt", "ln_e_w", "ln_e_b", "qkv_w", "qkv_b", "ao_w", "ao_b", "ln1_w", "ln1_b",
        "fc_w", "fc_b", "proj_w", "proj_b", "ln2_w", "ln2_b",
    ]

    public init(config: BertConfig) {
        self.config = config
        var cfg = config.kernelConfig
        var s = [size_t](repeating: 0, count: Int(DR_BERT_NUM_PARAMS))
        let total = Int(dr_bert_param_sizes(&cfg, &s))
        let sizes = s.map { Int($0) }
        tensorSizes = sizes
        arena = FloatArena(count: total)
        params = dr_bert_params()
        dr_bert_params_point(&params, arena.base, &cfg)
    }

    public var parameterCount: Int { arena.count }

    private var packedArena: FloatArena?
    private var packedTable: UnsafeMutablePointer<dr_bert_packed>?
    private let packLock = NSLock()

    /// Packs the four linear weights of every layer for the few-rows kernel (`dr_bert_pack`:
    /// the single-utterance path, N <= DR_SMALL_MATMUL_ROWS tokens) and attaches them to `params`.
    /// Call it only on weights that no longer change: a later write to the arena would not reach
    /// the packed copy. Idempotent and thread-safe; a no-op on CPUs without the kernel. Costs
    /// `packedBytes` of memory (42.5 MB for all-MiniLM-L6-v2).
    public func pack() {
        packLock.lock()
        defer { packLock.unlock() }
        guard packedTable == nil, dr_packed_matmul_isa() != 0 else { return }
        var cfg = config.kernelConfig
        let a = FloatArena(count: Int(dr_bert_packed_size(&cfg)))
        let t = UnsafeMutablePointer<dr_bert_packed>.allocate(capacity: 1)
        t.initialize(to: dr_bert_packed())
        var p = params
        dr_bert_pack(t, a.base, &p, &cfg)
        packedArena = a
        packedTable = t
        params.packed = UnsafePointer(t)
    }

    private var packedTArena: FloatArena?

    /// Also packs the transposed weights for the backward pass's input gradients (`dr_bert_pack_t`,
    /// another `packedBytes`), after `pack()`. For `training.packedGemm`; the same rules as `pack()`.
    public func packTransposed() {
        pack()
        packLock.lock()
        defer { packLock.unlock() }
        guard let t = packedTable, packedTArena == nil else { return }
        var cfg = config.kernelConfig
        let a = FloatArena(count: Int(dr_bert_packed_t_size(&cfg)))
        var p = params
        dr_bert_pack_t(t, a.base, &p, &cfg)
        packedTArena = a
    }

    private var bf16Words: UnsafeMutableBufferPointer<UInt32>?
    private var bf16Table: UnsafeMutablePointer<dr_bert_packed>?

    /// The bfloat16 packs of the linear weights, forward and transposed (`dr_bert_pack_bf16`,
    /// 42.5 MB for all-MiniLM-L6-v2), in a table of their own beside the fp32 one, so only the
    /// passes given this table (`training.frozenPrecision` "bf16") change precision. nil on a CPU
    /// without AVX512-BF16. Idempotent and thread-safe.
    public func packBF16() -> UnsafePointer<dr_bert_packed>? {
        pack()
        packLock.lock()
        defer { packLock.unlock() }
        if let t = bf16Table { return UnsafePointer(t) }
        guard dr_bf16_available() != 0 else { return nil }
        var cfg = config.kernelConfig
        let words = UnsafeMutableBufferPointer<UInt32>.allocate(capacity: Int(dr_bert_packed_bf16_size(&cfg)))
        let t = UnsafeMutablePointer<dr_bert_packed>.allocate(capacity: 1)
        t.initialize(to: packedTable?.pointee ?? dr_bert_packed())
        var p = params
        dr_bert_pack_bf16(t, words.baseAddress, &p, &cfg)
        bf16Words = words
        bf16Table = t
        return UnsafePointer(t)
    }

    /// Bytes held by the packed copies (0 before `pack()` or without the kernel).
    public var packedBytes: Int {
        packLock.lock()
        defer { packLock.unlock() }
        return ((packedArena?.count ?? 0) + (packedTArena?.count ?? 0)) * MemoryLayout<Float>.size
            + (bf16Words?.count ?? 0) * MemoryLayout<UInt32>.size
    }

    deinit {
        packedTable?.deallocate()
        bf16Table?.deallocate()
        bf16Words?.deallocate()
    }

    /// A randomly initialised encoder (tests, synthetic runs): N(0, 0.02)-like weights, LayerNorm = 1/0.
    public convenience init(config: BertConfig, seed: UInt64) {
        self.init(config: config)
        var rng = SplitMix64(seed: seed)
        var offset = 0
        for (i, n) in tensorSizes.enumerated() {
            let name = Self.tensorNames[i]
            let isLNWeight = name.hasPrefix("ln") && name.hasSuffix("_w")
            for k in 0..<n {
                if isLNWeight {
                    arena.base[offset + k] = 1
                } else if name.hasSuffix("_b") {
                    arena.base[offset + k] = 0.01 * rng.nextSigned()
                } else {
                    arena.base[offset + k] = 0.1 * rng.nextSigned()
                }
            }
            offset += n
        }
    }

    /// Loads `config.json` and `model.safetensors` (standard Hugging Face BERT names, with or
    /// without a `bert.` prefix) from a model directory.
    public convenience init(directory: URL) throws {
        let configURL = directory.appendingPathComponent("config.json")
        let weightsURL = directory.appendingPathComponent("model.safetensors")
        for u in [configURL, weightsURL] where !FileManager.default.fileExists(atPath: u.path) {
            throw ModelError.missingFile(u.path)
        }
        let config = try BertConfig(contentsOf: configURL)
        try config.validate()
        self.init(config: config)
        let file = try SafeTensorsFile(url: weightsURL)
        try load(from: file)
    }

    private func load(from file: SafeTensorsFile) throws {
        let prefix = file.tensors["bert.embeddings.word_embeddings.weight"] != nil ? "bert." : ""
        let C = config.hidden, I = config.intermediate, L = config.layers
        let fileName = file.url.lastPathComponent

        func copy(_ name: String, _ dst: UnsafeMutablePointer<Float>, _ shape: [Int]) throws {
            let info = try file.info(prefix + name)
            if info.shape != shape {
                // [n] and [1, n] style differences are still a mismatch: the layout must be exact.
                throw ModelError.shapeMismatch(file: fileName, tensor: prefix + name, expected: shape, found: info.shape)
            }
            try file.copyFloats(prefix + name, into: dst, count: shape.reduce(1, *))
        }
        let p = params
        try copy("embeddings.word_embeddings.weight", p.wte, [config.vocabSize, C])
        try copy("embeddings.position_embeddings.weight", p.wpe, [config.maxPositions, C])
        try copy("embeddings.token_type_embeddings.weight", p.wtt, [config.typeVocabSize, C])
        try copy("embeddings.LayerNorm.weight", p.ln_e_w, [C])
        try copy("embeddings.LayerNorm.bias", p.ln_e_b, [C])
        for l in 0..<L {
            let e = "encoder.layer.\(l)."
            let qkvW = p.qkv_w + l * 3 * C * C, qkvB = p.qkv_b + l * 3 * C
            for (k, part) in ["query", "key", "value"].enumerated() {
                try copy(e + "attention.self.\(part).weight", qkvW + k * C * C, [C, C])
                try copy(e + "attention.self.\(part).bias", qkvB + k * C, [C])
            }
            try copy(e + "attention.output.dense.weight", p.ao_w + l * C * C, [C, C])
            try copy(e + "attention.output.dense.bias", p.ao_b + l * C, [C])
            try copy(e + "attention.output.LayerNorm.weight", p.ln1_w + l * C, [C])
            try copy(e + "attention.output.LayerNorm.bias", p.ln1_b + l * C, [C])
            try copy(e + "intermediate.dense.weight", p.fc_w + l * I * C, [I, C])
            try copy(e + "intermediate.dense.bias", p.fc_b + l * I, [I])
            try copy(e + "output.dense.weight", p.proj_w + l * C * I, [C, I])
            try copy(e + "output.dense.bias", p.proj_b + l * C, [C])
            try copy(e + "output.LayerNorm.weight", p.ln2_w + l * C, [C])
            try copy(e + "output.LayerNorm.bias", p.ln2_b + l * C, [C])
        }
    }

    /// FNV-1a 64 over the arena's bytes: identifies the exact base a state was trained on.
    public func fingerprint() -> String {
        var h = FNV1a()
        h.add(UnsafeRawBufferPointer(start: arena.base, count: arena.count * 4))
        return "fnv1a64:" + h.hex
    }
}
