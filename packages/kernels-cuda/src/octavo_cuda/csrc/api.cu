// Host API (planning, validation, dispatch) and the reshape_and_cache kernels.
#include "api_impl.cuh"
