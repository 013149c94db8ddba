import Foundation
import Testing
@testable import DualReplay

/// The C-kernel encoder against reference outputs of the original all-MiniLM-L6-v2
/// (../shared/fixtures, made with transformers on PyTorch). These run in CI: `make setup`
/// installs the model, and a missing file fails the test.
@Suite(.serialized) struct EncoderGoldenTests {
    struct Sentence: Decodable { let text: String; let input_ids: [Int32] }
    struct Golden: Decodable { let sentences: [Sentence]; let max_length: Int }

    static func load() throws -> (SentenceEncoder, Golden, SafeTensorsFile) {
        let model = try TestPaths.require(TestPaths.model.appendingPathComponent("model.safetensors"))
        let encoder = try SentenceEncoder(modelDirectory: model.deletingLastPathComponent())
        let json = try TestPaths.require(TestPaths.fixtures.appendingPathComponent("minilm_golden.json"))
        let golden = try JSONDecoder().decode(Golden.self, from: Data(contentsOf: json))
        let ref = try SafeTensorsFile(url: try TestPaths.require(TestPaths.fixtures.appendingPathComponent("minilm_golden.safetensors")))
        return (encoder, golden, ref)
    }

    static func maxAbsDiff(_ a: [Float], _ b: [Float]) -> Float {
        precondition(a.count == b.count, "length \(a.count) vs \(b.count)")
        var m: Float = 0
        for i in a.indices { m = max(m, abs(a[i] - b[i])) }
        return m
    }

    @Test func tokenIdsMatchReference() throws {
        let (encoder, golden, _) = try Self.load()
        #expect(golden.sentences.count == 49)
        for (i, s) in golden.sentences.enumerated() {
            #expect(encoder.tokenizer.encode(s.text) == s.input_ids, "sentence \(i): \(s.text.prefix(60))")
        }
    }

    @Test func perLayerHiddenStatesMatchReference() throws {
        let (encoder, golden, ref) = try Self.load()
        for i in 0..<8 {
            let out = encoder.forward(PackedBatch([golden.sentences[i].input_ids]))
            for l in 0...encoder.config.layers {
                let expected = try ref.floats("s\(i).hidden.\(l)")
                let d = Self.maxAbsDiff(out.hidden(layer: l), expected)
                #expect(d <= 1e-4, "sentence \(i) layer \(l): max |diff| \(d)")
            }
        }
    }

    @Test func poolingAndEmbeddingsMatchReferencePerSentence() throws {
        let (encoder, golden, ref) = try Self.load()
        for (i, s) in golden.sentences.enumerated() {
            let out = encoder.forward(PackedBatch([s.input_ids]))
            let dCls = Self.maxAbsDiff(out.cls(), try ref.floats("s\(i).cls"))
            let dMean = Self.maxAbsDiff(out.meanPooled(), try ref.floats("s\(i).mean"))
            let dEmb = Self.maxAbsDiff(out.sentenceEmbeddings(), try ref.floats("s\(i).embedding"))
            #expect(dCls <= 1e-4, "sentence \(i) cls: \(dCls)")
            #expect(dMean <= 1e-4, "sentence \(i) mean: \(dMean)")
            #expect(dEmb <= 1e-5, "sentence \(i) embedding: \(dEmb)")
        }
    }

    /// All 49 sentences as ONE batch: the result must equal the reference's padded batch, i.e.
    /// batching never leaks between sequences.
    @Test func oneBatchMatchesReferenceBatch() throws {
        let (encoder, golden, ref) = try Self.load()
        let ids = golden.sentences.map(\.input_ids)
        let emb = encoder.forward(PackedBatch(ids)).sentenceEmbeddings()
        let expected = try ref.floats("batch.embedding")
        #expect(expected.count == 49 * 384)
        let d = Self.maxAbsDiff(emb, expected)
        #expect(d <= 1e-5, "batch embedding max |diff| \(d)")
        // and through the chunked text API
        let viaText = encoder.embed(golden.sentences.map(\.text), maxTokens: 300).flatMap { $0 }
        #expect(Self.maxAbsDiff(viaText, expected) <= 1e-5)
    }

    @Test func encodesUnseenUtterancesConsistently() throws {
        let (encoder, _, _) = try Self.load()
        // Texts the fixtures do not contain: embeddings are unit length and a text alone equals
        // the same text inside a batch with others.
        let texts = ["please freeze my debit card right now", "is it going to snow in oslo tomorrow",
                     "transfer 40 dollars to my savings", "what's my pto balance"]
        let batch = encoder.embed(texts)
        for (i, t) in texts.enumerated() {
            let alone = encoder.embed([t])[0]
            #expect(Self.maxAbsDiff(alone, batch[i]) <= 1e-6)
            let norm = alone.reduce(0) { $0 + $1 * $1 }.squareRoot()
            #expect(abs(norm - 1) < 1e-5)
        }
        // related utterances are closer than unrelated ones
        func cos(_ a: [Float], _ b: [Float]) -> Float { zip(a, b).reduce(0) { $0 + $1.0 * $1.1 } }
        let card = encoder.embed(["block my credit card"])[0]
        #expect(cos(card, batch[0]) > cos(card, batch[1]))
    }
}
