// Paged attention kernels for __nv_bfloat16; one file per dtype so that the build runs in parallel.
#include "attention_kernels.cuh"

namespace octavo {
template const char* launch_attention_typed<__nv_bfloat16>(
    const PagedAttentionArgs&, const PagedAttentionPlan&, Stream);
}  // namespace octavo
