import Foundation
import Yams

/// YAML configs decode through the same Codable types (and the same strict checks) as JSON.
enum YAMLConfigDecoder {
    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError.invalid(field: "(file)", reason: "not UTF-8")
        }
        do {
            return try YAMLDecoder().decode(type, from: text)
        } catch let DecodingError.dataCorrupted(ctx) {
            // Yams reports any error thrown while decoding as "not valid YAML"; ours say more
            if let e = ctx.underlyingError as? ConfigError { throw e }
            if let e = ctx.underlyingError as? DecodingError { throw e }
            throw DecodingError.dataCorrupted(ctx)
        }
    }
}
