// swift-tools-version:6.0
import PackageDescription

let package = Package(
    name: "DualReplay",
    products: [
        .library(name: "DualReplay", targets: ["DualReplay"]),
        .executable(name: "dualreplay", targets: ["dualreplay"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "5.0.0"),
    ],
    targets: [
        // OpenBLAS through pkg-config; no absolute paths here.
        .systemLibrary(
            name: "COpenBLAS",
            path: "Sources/COpenBLAS",
            pkgConfig: "openblas",
            providers: [.apt(["libopenblas-dev", "liblapacke-dev"])]
        ),
        // Open MPI through pkg-config (`ompi-c`), reached only through the C shim below: Swift
        // never includes mpi.h (MPI_COMM_WORLD, MPI_FLOAT, MPI_IN_PLACE are macros).
        .systemLibrary(
            name: "CMPI",
            path: "Sources/CMPI",
            pkgConfig: "ompi-c",
            providers: [.apt(["libopenmpi-dev", "openmpi-bin"])]
        ),
        .target(
            name: "CMPIShim",
            dependencies: ["CMPI"],
            path: "Sources/CMPIShim",
            sources: ["src"],
            publicHeadersPath: "include"
        ),
        // The C kernels: encoder, attention, adapter, LoRA, router, losses, optimizer.
        .target(
            name: "CKernels",
            dependencies: ["COpenBLAS"],
            path: "CKernels",
            sources: ["src"],
            publicHeadersPath: "include",
            linkerSettings: [.linkedLibrary("m")]
        ),
        .target(
            name: "DualReplay",
            dependencies: ["CKernels", "CMPIShim", .product(name: "Yams", package: "Yams")],
            path: "Sources/DualReplay"
        ),
        .executableTarget(
            name: "dualreplay",
            dependencies: ["DualReplay", .product(name: "ArgumentParser", package: "swift-argument-parser")],
            path: "Sources/dualreplay"
        ),
        .executableTarget(
            name: "dr-bench",
            dependencies: ["DualReplay", "CKernels"],
            path: "bench/Sources"
        ),
        .executableTarget(
            name: "dr-fuzz",
            dependencies: ["DualReplay"],
            path: "Sources/dr-fuzz"
        ),
        .executableTarget(
            name: "compare-methods",
            dependencies: ["DualReplay"],
            path: "Examples/CompareMethods"
        ),
        .testTarget(
            name: "DualReplayTests",
            dependencies: ["DualReplay", "CKernels"],
            path: "Tests/DualReplayTests"
        ),
    ],
    swiftLanguageModes: [.v5]
)
