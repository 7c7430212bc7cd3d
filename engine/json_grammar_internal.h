/*
 * engine/json_grammar_internal.h — (internal to json_grammar*.c) the
 * compiled grammar shared by the compiler (json_grammar.c) and the matcher
 * (json_grammar_match.c).
 *
 * A grammar is an array of nodes; children are node indices, so $ref
 * recursion is a cycle. REF nodes are resolved to their target and UNION
 * nodes (anyOf, type lists, "any value") flattened into lists of concrete
 * nodes after compiling. mind is the fewest matcher frames a finite
 * instance needs, so the matcher never enters a value it cannot finish
 * within JG_MAX_DEPTH.
 */
#ifndef RT_ENGINE_JSON_GRAMMAR_INTERNAL_H
#define RT_ENGINE_JSON_GRAMMAR_INTERNAL_H

#include "engine/json_grammar.h"

#define JG_MAX_DEPTH 32      /* nesting frames at run time */
#define JG_MAX_STACKS 32     /* parallel parses (anyOf alternatives alive) */
#define JG_WS_MAX 24         /* consecutive whitespace bytes */
#define JG_NUM_DIGITS 20     /* digits in an integer or fraction part */
#define JG_EXP_DIGITS 3      /* digits in an exponent */
#define JG_FREE_KEY_MAX 64   /* bytes of a key not among "properties" */
#define JG_MAX_PROPS 64      /* properties per object (a 64-bit mask) */
#define JG_INF 1000000       /* mind of a schema with no finite instance */

enum jg_kind { JG_OBJECT, JG_ARRAY, JG_STRING, JG_NUMBER, JG_INTEGER, JG_ENUM, JG_UNION, JG_REF };

typedef struct jg_prop {
    char *name;          /* the key as cJSON serializes it, without quotes */
    size_t len;
    int node;            /* schema of its value */
} jg_prop;

typedef struct jg_lit {
    char *s;             /* an enum/const value printed unformatted by cJSON */
    size_t len;
} jg_lit;

typedef struct jg_node {
    int kind;
    int first, count;    /* OBJECT: props; ENUM: lits (sorted); UNION: raw alts */
    int ffirst, fcount;  /* UNION: flattened concrete alternatives in flat */
    int child;           /* ARRAY: items; OBJECT: additional (-1: none); REF: target */
    int64_t min, max;    /* ARRAY: items; STRING: code points; max -1: none */
    uint64_t required;   /* OBJECT: bits of props that must appear */
    int mind;            /* fewest frames of a finite instance (JG_INF: none) */
    int fit;             /* OBJECT: index in fitmask of JG_MAX_DEPTH masks */
} jg_node;

struct json_grammar {
    jg_node *nodes;
    int n_nodes, cap_nodes;
    jg_prop *props;
    int n_props, cap_props;
    jg_lit *lits;
    int n_lits, cap_lits;
    int *alts;           /* raw UNION children */
    int n_alts, cap_alts;
    int *flat;           /* flattened UNION alternatives */
    int n_flat, cap_flat;
    uint64_t *fitmask;   /* per OBJECT and frame index: props whose value fits */
    int n_fit;
    int root;
    uint32_t key_max;    /* bytes of a free key: past every property name */
};

/* The node a child index stands for: REF chains followed (to a concrete
 * node or a UNION). */
static inline int jg_final(const json_grammar *g, int node)
{
    while (g->nodes[node].kind == JG_REF)
        node = g->nodes[node].child;
    return node;
}

#endif
