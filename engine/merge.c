/*
 * engine/merge.c — engine_merge (W + scaling * B A into a new model
 * directory) and the parsing of target-module lists.
 */
#include <stdio.h>
#include <string.h>

#include "engine/engine.h"
#include "engine/hf_config.h"
#include "engine/model.h"
#include "engine/trainer.h"

int engine_model_hidden_size(const char *model_dir)
{
    model_config c;
    return hf_config_load(model_dir, &c, NULL, 0) == RT_OK ? c.hidden_size : 0;
}

int engine_parse_target_modules(const char *list, unsigned *out)
{
    if (strcmp(list, "all-linear") == 0) {
        *out = PEFT_ALL_MODULES;
        return RT_OK;
    }
    unsigned bits = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", list);
    char *save = NULL;
    for (char *name = strtok_r(buf, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
        while (*name == ' ')
            name++;
        enum peft_module m;
        if (peft_module_from_name(name, &m) != RT_OK)
            return RT_ERR_INVALID;
        bits |= 1u << m;
    }
    if (!bits || strlen(list) >= sizeof buf)
        return RT_ERR_INVALID;
    *out = bits;
    return RT_OK;
}

int engine_merge(const char *model_dir, const char *adapter_dir, const char *out_dir, char *err,
                 size_t errsize)
{
    const kernels_backend *be = kernels_cpu_backend();
    model *m = NULL;
    lora *l = NULL;
    int rc = model_load(model_dir, be, &m, err, errsize);
    if (rc == RT_OK)
        rc = lora_load(adapter_dir, &m->cfg, be, &l, err, errsize);
    if (rc == RT_OK)
        rc = lora_merge_into(l, m);
    if (rc == RT_OK)
        rc = model_save(m, out_dir, err, errsize);
    if (rc == RT_OK)
        rc = engine_copy_tokenizer_files(model_dir, out_dir, err, errsize);
    lora_free(l);
    model_free(m);
    return rc;
}
