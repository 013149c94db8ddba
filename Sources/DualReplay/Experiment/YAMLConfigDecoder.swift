import Foundation
import Yams

/// YAML configs decode through the same Codable types as JSON.
enum YAMLConfigDecoder {
    static func decode<T: Decodable>(_ type: T.Type, from data: Data) throws -> T {
        guard let text = String(data: data, encoding: .utf8) else {
            throw ConfigError.invalid(field: "(file)", reason: "not UTF-8")
        }
        return try YAMLDecoder().decode(type, from: text)
    }
}
