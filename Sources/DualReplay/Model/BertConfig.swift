// The architecture of a BERT-family encoder, read from a Hugging Face `config.json`.
import Foundation

public struct BertConfig: Codable, Equatable, Sendable {
    public var layers: Int
    public var hidden: Int
    public var heads: Int
    public var intermediate: Int
    public var vocabSize: Int
    public var maxPositions: Int
    public var typeVocabSize: Int
    public var layerNormEps: Float
    /// Must be "gelu": the kernels implement the exact erf GELU, and Hugging Face's other names
    /// ("gelu_new", "gelu_pytorch_tanh", ...) are the tanh approximation or other functions.
    public var hiddenAct: String

    public init(layers: Int, hidden: Int, heads: Int, intermediate: Int, vocabSize: Int, maxPositions: Int,
                typeVocabSize: Int = 2, layerNormEps: Float = 1e-12, hiddenAct: String = "gelu") {
        self.layers = layers
        self.hidden = hidden
        self.heads = heads
        self.intermediate = intermediate
        self.vocabSize = vocabSize
        self.maxPositions = maxPositions
        self.typeVocabSize = typeVocabSize
        self.layerNormEps = layerNormEps
        self.hiddenAct = hiddenAct
    }

    /// Hugging Face key names, so encoding writes a `config.json` that transformers understands.
    enum CodingKeys: String, CodingKey {
        case layers = "num_hidden_layers"
        case hidden = "hidden_size"
        case heads = "num_attention_heads"
        case intermediate = "intermediate_size"
        case vocabSize = "vocab_size"
        case maxPositions = "max_position_embeddings"
        case typeVocabSize = "type_vocab_size"
        case layerNormEps = "layer_norm_eps"
        case hiddenAct = "hidden_act"
    }

    /// Decodes the Hugging Face keys (optional ones defaulted); does not validate.
    public init(from decoder: Decoder) throws {
        guard case let .object(object) = try StrictJSON(from: decoder) else {
            throw BertConfigError.invalidJSON(file: BertConfigError.inMemory, reason: "the top level must be an object")
        }
        try self.init(object: object, file: BertConfigError.inMemory)
    }

    /// Reads and validates `config.json`. Errors name the file and the key.
    public init(contentsOf url: URL) throws {
        let file = url.path
        let data: Data
        do {
            data = try Data(contentsOf: url)
        } catch {
            throw BertConfigError.unreadable(file: file, reason: error.localizedDescription)
        }
        let root: StrictJSON
        do {
            root = try StrictJSON.parse(data)
        } catch let error as StrictJSON.ParseError {
            throw BertConfigError.invalidJSON(file: file, reason: error.description)
        }
        guard case let .object(object) = root else {
            throw BertConfigError.invalidJSON(file: file, reason: "the top level must be an object")
        }
        try self.init(object: object, file: file)

        // RoBERTa-style models offset positions by the padding index, and relative position
        // embeddings need other kernels: either would load cleanly and compute the wrong thing.
        let reader = KeyReader(object: object, file: file)
        if let type = try reader.string("model_type"), type != "bert" {
            throw BertConfigError.invalidValue(file: file, key: "model_type", value: type, reason: "only \"bert\" models are supported")
        }
        if let type = try reader.string("position_embedding_type"), type != "absolute" {
            throw BertConfigError.invalidValue(file: file, key: "position_embedding_type", value: type,
                                               reason: "only \"absolute\" position embeddings are supported")
        }
        try validate(file: file)
    }

    private init(object: [String: StrictJSON], file: String) throws {
        let reader = KeyReader(object: object, file: file)
        func required(_ key: CodingKeys) throws -> Int {
            guard let value = try reader.integer(key.rawValue) else { throw BertConfigError.missingKey(file: file, key: key.rawValue) }
            return value
        }
        layers = try required(.layers)
        hidden = try required(.hidden)
        heads = try required(.heads)
        intermediate = try required(.intermediate)
        vocabSize = try required(.vocabSize)
        maxPositions = try required(.maxPositions)
        typeVocabSize = try reader.integer(CodingKeys.typeVocabSize.rawValue) ?? 2
        layerNormEps = try reader.float(CodingKeys.layerNormEps.rawValue) ?? 1e-12
        hiddenAct = try reader.string(CodingKeys.hiddenAct.rawValue) ?? "gelu"
    }

    /// Typed access to the keys of a config object; absent or null keys read as nil.
    private struct KeyReader {
        let object: [String: StrictJSON]
        let file: String

        func integer(_ key: String) throws -> Int? {
            switch object[key] {
            case nil, .null?: return nil
            case let .integer(v)?: return v
            case let .number(d)?:
                guard let v = Int(exactly: d) else {
                    throw BertConfigError.invalidValue(file: file, key: key, value: "\(d)", reason: "must be an integer")
                }
                return v
            default: throw BertConfigError.wrongType(file: file, key: key, expected: "an integer")
            }
        }

        func float(_ key: String) throws -> Float? {
            switch object[key] {
            case nil, .null?: return nil
            case let .integer(v)?: return Float(v)
            case let .number(d)?:
                guard Float(d).isFinite else {
                    throw BertConfigError.invalidValue(file: file, key: key, value: "\(d)", reason: "out of range for Float")
                }
                return Float(d)
            default: throw BertConfigError.wrongType(file: file, key: key, expected: "a number")
            }
        }

        func string(_ key: String) throws -> String? {
            switch object[key] {
            case nil, .null?: return nil
            case let .string(s)?: return s
            default: throw BertConfigError.wrongType(file: file, key: key, expected: "a string")
            }
        }
    }

    /// Checks that the sizes describe a model the kernels can run.
    public func validate() throws { try validate(file: BertConfigError.inMemory) }

    private func validate(file: String) throws {
        let sizes: [(CodingKeys, Int)] = [
            (.layers, layers), (.hidden, hidden), (.heads, heads), (.intermediate, intermediate),
            (.vocabSize, vocabSize), (.maxPositions, maxPositions), (.typeVocabSize, typeVocabSize),
        ]
        for (key, value) in sizes where value <= 0 {
            throw BertConfigError.invalidValue(file: file, key: key.rawValue, value: String(value), reason: "must be positive")
        }
        guard hidden % heads == 0 else {
            throw BertConfigError.invalidValue(file: file, key: CodingKeys.hidden.rawValue, value: String(hidden),
                                               reason: "must be a multiple of num_attention_heads (\(heads))")
        }
        // The largest tables must be addressable; this also rejects absurd sizes from a corrupt file.
        for (key, rows) in [(CodingKeys.vocabSize, vocabSize), (.maxPositions, maxPositions), (.intermediate, intermediate)] {
            let (count, overflow) = rows.multipliedReportingOverflow(by: hidden)
            guard !overflow, count <= Int(Int32.max) else {
                throw BertConfigError.invalidValue(file: file, key: key.rawValue, value: String(rows),
                                                   reason: "a \(rows) x \(hidden) weight matrix is too large")
            }
        }
        guard layerNormEps.isFinite, layerNormEps > 0 else {
            throw BertConfigError.invalidValue(file: file, key: CodingKeys.layerNormEps.rawValue, value: String(layerNormEps),
                                               reason: "must be a positive number")
        }
        guard hiddenAct == "gelu" else { throw BertConfigError.unsupportedActivation(file: file, value: hiddenAct) }
    }
}

public enum BertConfigError: LocalizedError, Equatable {
    case unreadable(file: String, reason: String)
    case invalidJSON(file: String, reason: String)
    case missingKey(file: String, key: String)
    case wrongType(file: String, key: String, expected: String)
    case invalidValue(file: String, key: String, value: String, reason: String)
    case unsupportedActivation(file: String, value: String)

    /// The `file` of errors from `BertConfig.validate()` on a configuration not read from disk.
    public static let inMemory = "<BertConfig>"

    public var errorDescription: String? {
        switch self {
        case let .unreadable(file, reason):
            return "\(file): cannot read model config: \(reason)"
        case let .invalidJSON(file, reason):
            return "\(file): not a valid JSON config: \(reason)"
        case let .missingKey(file, key):
            return "\(file): missing required key \"\(key)\""
        case let .wrongType(file, key, expected):
            return "\(file): key \"\(key)\" must be \(expected)"
        case let .invalidValue(file, key, value, reason):
            return "\(file): key \"\(key)\" = \(value): \(reason)"
        case let .unsupportedActivation(file, value):
            return "\(file): key \"hidden_act\" = \"\(value)\" is not supported; only \"gelu\" (exact erf) is implemented"
        }
    }
}
