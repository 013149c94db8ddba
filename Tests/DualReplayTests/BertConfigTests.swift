import Foundation
import Testing
@testable import DualReplay

@Suite struct BertConfigTests {
    static var realConfig: URL { TestPaths.model.appendingPathComponent("config.json") }

    /// The real config with `edit` applied, written to a temporary `config.json`.
    static func editedConfig(in dir: URL, _ edit: (inout [String: Any]) -> Void) throws -> URL {
        var object = try JSONSerialization.jsonObject(with: Data(contentsOf: TestPaths.require(realConfig))) as! [String: Any]
        edit(&object)
        let url = dir.appendingPathComponent("config.json")
        try JSONSerialization.data(withJSONObject: object).write(to: url)
        return url
    }

    /// Loads an edited config and returns the error, checking that its message names the file.
    static func loadError(sourceLocation: SourceLocation = #_sourceLocation,
                          _ edit: (inout [String: Any]) -> Void) throws -> BertConfigError? {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = try editedConfig(in: dir, edit)
        do {
            _ = try BertConfig(contentsOf: url)
            Issue.record("config was accepted", sourceLocation: sourceLocation)
            return nil
        } catch let error as BertConfigError {
            #expect(error.localizedDescription.contains(url.path), "message must name the file: \(error.localizedDescription)",
                    sourceLocation: sourceLocation)
            return error
        }
    }

    @Test func readsTheRealConfig() throws {
        let url = try TestPaths.require(Self.realConfig)
        let config = try BertConfig(contentsOf: url)
        #expect(config == BertConfig(layers: 6, hidden: 384, heads: 12, intermediate: 1536, vocabSize: 30522,
                                     maxPositions: 512, typeVocabSize: 2, layerNormEps: 1e-12, hiddenAct: "gelu"))
        #expect(config.layerNormEps == Float(1e-12))
        try config.validate()
    }

    @Test func optionalKeysHaveDefaults() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = try Self.editedConfig(in: dir) {
            $0["type_vocab_size"] = nil
            $0["layer_norm_eps"] = nil
            $0["hidden_act"] = nil
            $0["model_type"] = nil
        }
        let config = try BertConfig(contentsOf: url)
        #expect(config.typeVocabSize == 2)
        #expect(config.layerNormEps == 1e-12)
        #expect(config.hiddenAct == "gelu")
    }

    @Test func missingKeyNamesFileAndKey() throws {
        for key in ["num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size", "max_position_embeddings"] {
            let error = try Self.loadError { $0[key] = nil }
            #expect(error == .missingKey(file: error?.file ?? "", key: key))
            #expect(error?.localizedDescription.contains(key) == true)
        }
    }

    @Test func wrongTypesAreRefused() throws {
        let text = try Self.loadError { $0["hidden_size"] = "384" }
        #expect(text == .wrongType(file: text?.file ?? "", key: "hidden_size", expected: "an integer"))
        let eps = try Self.loadError { $0["layer_norm_eps"] = "small" }
        #expect(eps == .wrongType(file: eps?.file ?? "", key: "layer_norm_eps", expected: "a number"))
        let act = try Self.loadError { $0["hidden_act"] = 3 }
        #expect(act == .wrongType(file: act?.file ?? "", key: "hidden_act", expected: "a string"))
        let fraction = try Self.loadError { $0["num_hidden_layers"] = 6.5 }
        if case .invalidValue(_, "num_hidden_layers", _, _)? = fraction {} else {
            Issue.record("6.5 layers: \(String(describing: fraction))")
        }
    }

    @Test func badValuesNameFileAndKey() throws {
        let cases: [(String, Any)] = [
            ("hidden_size", 385),                // not a multiple of 12 heads
            ("num_hidden_layers", 0),
            ("num_attention_heads", -12),
            ("vocab_size", 0),
            ("intermediate_size", -1),
            ("max_position_embeddings", 0),
            ("type_vocab_size", 0),
            ("layer_norm_eps", 0),
            ("vocab_size", 1 << 40),             // absurd: the embedding table would not fit
        ]
        for (key, value) in cases {
            let error = try Self.loadError { $0[key] = value }
            if case .invalidValue(_, key, _, _)? = error {} else { Issue.record("\(key) = \(value): \(String(describing: error))") }
            #expect(error?.localizedDescription.contains(key) == true)
        }
    }

    @Test func onlyExactGeluIsAccepted() throws {
        for act in ["gelu_new", "gelu_pytorch_tanh", "relu", "GELU"] {
            let error = try Self.loadError { $0["hidden_act"] = act }
            #expect(error == .unsupportedActivation(file: error?.file ?? "", value: act))
            #expect(error?.localizedDescription.contains("hidden_act") == true)
        }
    }

    @Test func otherArchitecturesAreRefused() throws {
        let roberta = try Self.loadError { $0["model_type"] = "roberta" }
        if case .invalidValue(_, "model_type", "roberta", _)? = roberta {} else { Issue.record("\(String(describing: roberta))") }
        let relative = try Self.loadError { $0["position_embedding_type"] = "relative_key" }
        if case .invalidValue(_, "position_embedding_type", _, _)? = relative {} else { Issue.record("\(String(describing: relative))") }
    }

    @Test func unreadableAndInvalidFiles() throws {
        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let garbage = dir.appendingPathComponent("config.json")
        try Data("{ \"hidden_size\": 384,".utf8).write(to: garbage)
        #expect(throws: BertConfigError.self) { try BertConfig(contentsOf: garbage) }
        do { _ = try BertConfig(contentsOf: garbage) } catch let error as BertConfigError {
            if case .invalidJSON = error {} else { Issue.record("\(error)") }
            #expect(error.localizedDescription.contains(garbage.path))
        }
        try Data("[1, 2]".utf8).write(to: garbage)
        do { _ = try BertConfig(contentsOf: garbage) } catch let error as BertConfigError {
            if case .invalidJSON = error {} else { Issue.record("\(error)") }
        }
        let missing = dir.appendingPathComponent("absent/config.json")
        do { _ = try BertConfig(contentsOf: missing) } catch let error as BertConfigError {
            if case .unreadable = error {} else { Issue.record("\(error)") }
            #expect(error.localizedDescription.contains(missing.path))
        }
    }

    @Test func validateInMemory() throws {
        var config = BertConfig(layers: 2, hidden: 8, heads: 2, intermediate: 12, vocabSize: 20, maxPositions: 10)
        try config.validate()
        config.heads = 3
        #expect(throws: BertConfigError.invalidValue(file: BertConfigError.inMemory, key: "hidden_size", value: "8",
                                                     reason: "must be a multiple of num_attention_heads (3)")) {
            try config.validate()
        }
        config.heads = 2
        config.hiddenAct = "gelu_new"
        #expect(throws: BertConfigError.unsupportedActivation(file: BertConfigError.inMemory, value: "gelu_new")) { try config.validate() }
    }

    @Test func codableUsesHuggingFaceKeys() throws {
        let config = try BertConfig(contentsOf: TestPaths.require(Self.realConfig))
        let data = try JSONEncoder().encode(config)
        let object = try JSONSerialization.jsonObject(with: data) as! [String: Any]
        #expect(object["num_hidden_layers"] as? Int == 6)
        #expect(object["hidden_act"] as? String == "gelu")
        #expect(try JSONDecoder().decode(BertConfig.self, from: data) == config)

        let dir = try TestPaths.tempDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let url = dir.appendingPathComponent("config.json")
        try data.write(to: url)
        #expect(try BertConfig(contentsOf: url) == config)
    }
}

private extension BertConfigError {
    var file: String {
        switch self {
        case let .unreadable(f, _), let .invalidJSON(f, _), let .missingKey(f, _), let .wrongType(f, _, _),
             let .invalidValue(f, _, _, _), let .unsupportedActivation(f, _):
            return f
        }
    }
}
