/// Token ids of utterances, truncated to `maxLength` by the tokenizer and cached: a training or
/// evaluation run tokenizes every utterance once, however often it is replayed or re-scored.
public final class TokenCache {
    public let tokenizer: BertTokenizer
    public let maxLength: Int
    private var cache: [String: [Int32]] = [:]

    public init(tokenizer: BertTokenizer, maxLength: Int) {
        self.tokenizer = tokenizer
        self.maxLength = maxLength
    }

    public func ids(_ text: String) -> [Int32] {
        if let c = cache[text] { return c }
        let t = tokenizer.encode(text, maxLength: maxLength)
        cache[text] = t
        return t
    }

    public func ids(_ texts: [String]) -> [[Int32]] { texts.map { ids($0) } }
}
