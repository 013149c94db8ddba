#pragma once
// dr_train.h — training kernels (adapter, LoRA, heads and losses, router, AdamW). Included by dr_kernels.h.
#include <stddef.h>
#include <stdint.h>
