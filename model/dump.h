/* Dump of one forward+backward for independent checking (bench/torch_check.py): the batch, the
 * loss, every gradient and each layer's attention plan (buckets / keep masks), next to a
 * checkpoint holding the parameters. Byte layout: docs/FORMATS.md. */
#ifndef MODEL_DUMP_H
#define MODEL_DUMP_H

#include <stdint.h>

#include "model/backend.h"

/* Runs forward+backward of inputs/targets [B][T] with plan keys (step, layer, micro 0) and writes
 * DIR/dump.bin and DIR/dump_params.bin (checkpoint format). */
void model_dump(backend_t *be, const char *config_json, const int32_t *inputs, const int32_t *targets,
                int B, int T, uint64_t step, const char *dir);

#endif
