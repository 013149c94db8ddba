// dr-fuzz: fuzzing entry points (see `make fuzz`). Placeholder until the harness lands.
print("dr-fuzz: build with `make fuzz`")
