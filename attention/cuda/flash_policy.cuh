/* Tile schedules and masks: everything the flash kernels need to know about WHICH (query, key)
 * pairs interact, kept apart from the tile arithmetic (flash_fwd.cuh, flash_bwd.cuh).
 *
 * A kernel works on a sequence of query rows r in [0, q_len(bh)) and key rows c in
 * [0, k_len(bh)) of one (batch, head) bh = b * H + h. These are "work rows": a sparse mode may
 * reorder and compact them. A policy answers:
 *   q_row(bh, r), k_row(bh, c)   the memory row (time step t in [0, T)) a work row is read from
 *                                and written to: outputs, lse and gradients land on original rows
 *   q_info(bh, r), k_info(bh, c) what the mask needs to know of a row (its original position,
 *                                bucket, ...), and allowed(qi, ki) whether the pair interacts
 *   num_key_tiles / key_tile     the live key tiles of a query tile (forward, deterministic dQ)
 *   num_query_tiles / query_tile the live query tiles of a key tile (dK, dV: the transpose)
 *   tile_full(qt, kt)            every pair of in-range rows of the tile is allowed, so the
 *                                kernel may skip the per-element mask
 *   LOOKS_UP_ROWS                whether rows, lists and infos are global loads (a plan's) or
 *                                arithmetic: the Hopper dK/dV producer looks a query tile up a
 *                                tile ahead only when they are loads (flash_bwd_sm90_ws.cuh)
 *   TMA                          the Hopper forward's producer loads Q, K and V tiles by TMA from
 *                                the policy's tensor maps (DenseCausalTmaPolicy, flash_tma.cuh)
 * Kernels mask rows past q_len / k_len themselves, so tile_full may ignore the ends.
 * Tile sizes are arguments because the forward and backward kernels tile differently.
 *
 * A sparse mode supplies its own policy struct with the same members (for example per-row
 * positions and buckets read from the plan, and key-tile lists from a work list); the kernels
 * are templates over it. */
#ifndef ATTENTION_CUDA_FLASH_POLICY_CUH
#define ATTENTION_CUDA_FLASH_POLICY_CUH

namespace flash {

/* Dense causal attention in natural order: key c may be seen by query r iff c <= r
 * (c < r with exclude_self). */
struct DenseCausalPolicy {
    int T;
    int exclude_self;
    static constexpr bool LOOKS_UP_ROWS = false, TMA = false;

    struct RowInfo {
        int pos;
    };

    __device__ __forceinline__ int q_len(int) const { return T; }
    __device__ __forceinline__ int k_len(int) const { return T; }
    __device__ __forceinline__ int q_row(int, int r) const { return r; }
    __device__ __forceinline__ int k_row(int, int c) const { return c; }
    __device__ __forceinline__ RowInfo q_info(int, int r) const { return {r}; }
    __device__ __forceinline__ RowInfo k_info(int, int c) const { return {c}; }
    __device__ __forceinline__ bool allowed(RowInfo q, RowInfo k) const {
        return k.pos <= q.pos - exclude_self;
    }

    /* Key tiles 0 .. last, where last holds the last key the tile's last query may see. */
    __device__ __forceinline__ int num_key_tiles(int, int qt, int BM, int BN) const {
        int last_row = min(T, (qt + 1) * BM) - 1;
        int last_col = last_row - exclude_self;
        return last_col < 0 ? 0 : last_col / BN + 1;
    }
    __device__ __forceinline__ int key_tile(int, int, int i, int, int) const { return i; }

    /* Query tiles from the one holding the first query that may see the tile's first key. */
    __device__ __forceinline__ int first_query_tile(int kt, int BM, int BN) const {
        return (kt * BN + exclude_self) / BM;
    }
    __device__ __forceinline__ int num_query_tiles(int, int kt, int BM, int BN) const {
        int n = (T + BM - 1) / BM - first_query_tile(kt, BM, BN);
        return n > 0 ? n : 0;
    }
    __device__ __forceinline__ int query_tile(int, int kt, int i, int BM, int BN) const {
        return first_query_tile(kt, BM, BN) + i;
    }

    /* Full when the tile's last key lies at or before the tile's first query (minus self). */
    __device__ __forceinline__ bool tile_full(int, int qt, int kt, int BM, int BN) const {
        return (kt + 1) * BN - 1 <= qt * BM - exclude_self;
    }
};

} // namespace flash

#endif
