import CKernels
import Foundation

/// Sequences packed back to back: sequence b owns token rows cuSeqlens[b] ..< cuSeqlens[b+1].
public struct PackedBatch: Sendable, Hashable {
    public private(set) var tokenIds: [Int32] = []
    public private(set) var cuSeqlens: [Int64] = [0]
    public var count: Int { cuSeqlens.count - 1 }
    public var tokenCount: Int { tokenIds.count }

    public init() {}
    public init(_ sequences: [[Int32]]) {
        tokenIds.reserveCapacity(sequences.reduce(0) { $0 + $1.count })
        for s in sequences { append(s) }
    }
    public mutating func append(_ ids: [Int32]) {
        tokenIds.append(contentsOf: ids)
        cuSeqlens.append(Int64(tokenIds.count))
    }
    public mutating func removeAll() {
        tokenIds.removeAll(keepingCapacity: true)
        cuSeqlens.removeAll(keepingCapacity: true)
        cuSeqlens.append(0)
    }
    public func length(_ b: Int) -> Int { Int(cuSeqlens[b + 1] - cuSeqlens[b]) }
}

/// Activations of one forward pass (`dr_bert_acts`), planned up front and grown only when a
/// larger batch arrives, so the hot loop does not allocate.
public final class EncoderWorkspace {
    let config: BertConfig
    private(set) var arena: FloatArena
    private(set) var tokenCapacity = 0
    private(set) var probCapacity = 0
    var acts = dr_bert_acts()

    public init(config: BertConfig) {
        self.config = config
        arena = FloatArena(count: 0)
    }

    /// Makes room for N tokens and PS attention probabilities per layer; repoints the C view.
    func prepare(tokens N: Int, probs PS: Int) {
        var cfg = config.kernelConfig
        if N > tokenCapacity || PS > probCapacity {
            tokenCapacity = max(N, tokenCapacity)
            probCapacity = max(PS, probCapacity)
            var sizes = [size_t](repeating: 0, count: Int(DR_BERT_NUM_ACTS))
            let total = dr_bert_act_sizes(&cfg, Int64(tokenCapacity), Int64(probCapacity), &sizes)
            arena = FloatArena(count: Int(total))
        }
        // The layout depends on N and PS: point the views for this batch's exact sizes.
        dr_bert_acts_point(&acts, arena.base, &cfg, Int64(N), Int64(PS))
    }

    public var bytes: Int { arena.count * 4 }
}

/// What the encoder produced for one packed batch (valid until the next call on the same encoder).
public struct EncoderOutput {
    public let batch: PackedBatch
    let workspace: EncoderWorkspace
    let hiddenSize: Int
    let layers: Int

    /// Hidden states after layer `l` (0 = embeddings), rows of all sequences packed: (N, C).
    public func hidden(layer l: Int) -> [Float] {
        precondition(l >= 0 && l <= layers)
        let n = batch.tokenCount * hiddenSize
        return Array(UnsafeBufferPointer(start: workspace.acts.hidden + l * n, count: n))
    }
    /// Hidden states of sequence b after layer l: (T_b, C).
    public func hidden(layer l: Int, sequence b: Int) -> [Float] {
        let n = batch.tokenCount * hiddenSize
        let start = Int(batch.cuSeqlens[b]) * hiddenSize
        return Array(UnsafeBufferPointer(start: workspace.acts.hidden + l * n + start, count: batch.length(b) * hiddenSize))
    }
    var lastHidden: UnsafeMutablePointer<Float> { workspace.acts.hidden + layers * batch.tokenCount * hiddenSize }

    /// [CLS] vectors of the last layer: (B, C).
    public func cls() -> [Float] { pool(dr_cls_pool_forward) }
    /// Mean over each sequence's tokens of the last layer: (B, C).
    public func meanPooled() -> [Float] { pool(dr_mean_pool_forward) }
    /// Sentence embeddings as sentence-transformers computes them: mean pooling, L2-normalised.
    public func sentenceEmbeddings() -> [Float] {
        var m = meanPooled()
        let B = Int64(batch.count), C = Int64(hiddenSize)
        m.withUnsafeMutableBufferPointer { p in dr_l2_normalize_forward(p.baseAddress!, p.baseAddress!, B, C) }
        return m
    }

    private func pool(_ f: (UnsafeMutablePointer<Float>?, UnsafePointer<Float>?, UnsafePointer<Int64>?, Int64, Int64) -> Void) -> [Float] {
        var out = [Float](repeating: 0, count: batch.count * hiddenSize)
        out.withUnsafeMutableBufferPointer { o in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                f(o.baseAddress, lastHidden, cu.baseAddress, Int64(batch.count), Int64(hiddenSize))
            }
        }
        return out
    }
}

/// The frozen BERT-family encoder, run by the C kernels, with its tokenizer (named so as not to
/// shadow Swift.Encoder).
public final class SentenceEncoder {
    public let weights: BertWeights
    public let tokenizer: BertTokenizer
    public let workspace: EncoderWorkspace
    public var config: BertConfig { weights.config }

    public init(weights: BertWeights, tokenizer: BertTokenizer) {
        self.weights = weights
        self.tokenizer = tokenizer
        workspace = EncoderWorkspace(config: weights.config)
    }

    /// Opens a model directory holding config.json, model.safetensors and vocab.txt.
    /// `maxLength` defaults to 256 (sentence-transformers' setting for all-MiniLM-L6-v2),
    /// capped by the model's position table.
    public convenience init(modelDirectory: URL, maxLength: Int = 256) throws {
        let weights = try BertWeights(directory: modelDirectory)
        let vocab = modelDirectory.appendingPathComponent("vocab.txt")
        guard FileManager.default.fileExists(atPath: vocab.path) else { throw ModelError.missingFile(vocab.path) }
        let tok = try BertTokenizer(vocabURL: vocab, maxLength: min(maxLength, weights.config.maxPositions))
        guard tok.vocab.count <= weights.config.vocabSize else {
            throw ModelError.unsupported("\(vocab.path): \(tok.vocab.count) tokens, but the model's embedding table has \(weights.config.vocabSize) rows")
        }
        weights.pack()  // loaded for inference: frozen from here on
        self.init(weights: weights, tokenizer: tok)
    }

    /// Runs the encoder on a packed batch. The output views this encoder's workspace.
    public func forward(_ batch: PackedBatch) -> EncoderOutput {
        precondition(batch.count > 0, "empty batch")
        let NH = Int64(config.heads)
        let PS = batch.cuSeqlens.withUnsafeBufferPointer { dr_attention_prob_size($0.baseAddress, Int64(batch.count), NH) }
        workspace.prepare(tokens: batch.tokenCount, probs: Int(PS))
        var cfg = config.kernelConfig
        var p = weights.params
        batch.tokenIds.withUnsafeBufferPointer { ids in
            batch.cuSeqlens.withUnsafeBufferPointer { cu in
                dr_bert_forward(&workspace.acts, nil, nil, &p, nil, &cfg, ids.baseAddress, nil, cu.baseAddress, Int64(batch.count), 0)
            }
        }
        return EncoderOutput(batch: batch, workspace: workspace, hiddenSize: config.hidden, layers: config.layers)
    }

    /// Token ids of each text ([CLS] … [SEP], truncated to the tokenizer's maximum length).
    public func encode(_ texts: [String]) -> [[Int32]] { texts.map { tokenizer.encode($0) } }

    /// Sentence embeddings (B, C) of any number of texts, computed in packed chunks of at most
    /// `maxTokens` tokens.
    public func embed(_ texts: [String], maxTokens: Int = 4096) -> [[Float]] {
        embed(ids: encode(texts), maxTokens: maxTokens)
    }

    public func embed(ids: [[Int32]], maxTokens: Int = 4096) -> [[Float]] {
        var result: [[Float]] = []
        result.reserveCapacity(ids.count)
        var batch = PackedBatch()
        let C = config.hidden
        func flush() {
            guard batch.count > 0 else { return }
            let e = forward(batch).sentenceEmbeddings()
            for b in 0..<batch.count { result.append(Array(e[(b * C)..<((b + 1) * C)])) }
            batch.removeAll()
        }
        for s in ids {
            if batch.count > 0 && batch.tokenCount + s.count > maxTokens { flush() }
            batch.append(s)
        }
        flush()
        return result
    }
}
