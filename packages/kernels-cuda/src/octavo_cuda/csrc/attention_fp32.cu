// Paged attention kernels for float; one file per dtype so that the build runs in parallel.
#include "attention_kernels.cuh"

namespace octavo {
template const char* launch_attention_typed<float>(
    const PagedAttentionArgs&, const PagedAttentionPlan&, Stream);
}  // namespace octavo
