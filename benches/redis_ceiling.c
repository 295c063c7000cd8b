/*
 * The C ceiling for draining a Redis stream: hiredis, no framework, no
 * per-message work beyond pointing at each entry id.
 *
 *   sh benches/build_redis_ceiling.sh        # -> benches/.build/redis_ceiling_c
 *   benches/.build/redis_ceiling_c --url redis://127.0.0.1:6379/0 --stream S \
 *       --group g --count 500 --expect 100000 [--delete] [--sequential]
 *
 * Loop: XREADGROUP COUNT <count> on one stream, then one XACK of the whole
 * batch (and one XDEL with --delete). By default the acks of batch k and the
 * read of batch k+1 go out in one write (one round trip per batch);
 * --sequential waits for the acks before sending the next read (two round
 * trips per batch, the plain consumer of issue 11). The group must exist.
 * Prints one JSON line: {"n": .., "seconds": .., "rate": ..}; the time runs
 * from before connecting to the reply of the last ack.
 */
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what, const char *detail) {
    fprintf(stderr, "redis_ceiling_c: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    exit(1);
}

/* redis://host:port[/db] (no credentials: a benchmark against a local server). */
static void parse_url(const char *url, char *host, size_t hostlen, int *port, int *db) {
    const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : url;
    const char *colon = strchr(p, ':');
    const char *slash = strchr(p, '/');
    size_t n = colon ? (size_t)(colon - p) : slash ? (size_t)(slash - p) : strlen(p);
    if (n == 0 || n >= hostlen || strchr(p, '@')) die("unsupported --url", url);
    memcpy(host, p, n);
    host[n] = 0;
    *port = colon ? atoi(colon + 1) : 6379;
    *db = slash ? atoi(slash + 1) : 0;
}

/* Free the replies of `count` commands sent earlier; any error is fatal. */
static void drain_replies(redisContext *c, int count) {
    for (int i = 0; i < count; i++) {
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) die("reply", c->errstr);
        if (r->type == REDIS_REPLY_ERROR) die("server", r->str);
        freeReplyObject(r);
    }
}

static void send_read(redisContext *c, const char *group, const char *stream, const char *count) {
    const char *argv[] = {"XREADGROUP", "GROUP", group, "ceiling-c", "COUNT", count,
                          "BLOCK", "1000", "STREAMS", stream, ">"};
    redisAppendCommandArgv(c, 11, argv, NULL);
}

/* The entries of a one-stream XREADGROUP reply, or NULL when it is empty. */
static redisReply *entries_of(redisReply *r) {
    if (r->type == REDIS_REPLY_ERROR) die("server", r->str);
    if (r->type != REDIS_REPLY_ARRAY || r->elements == 0) return NULL;
    redisReply *pair = r->element[0];
    if (pair->type != REDIS_REPLY_ARRAY || pair->elements < 2) die("reply shape", "stream");
    redisReply *list = pair->element[1];
    return list->type == REDIS_REPLY_ARRAY && list->elements ? list : NULL;
}

/* Queue XACK (and XDEL) of every id in `list`; returns how many commands. */
static int send_acks(redisContext *c, redisReply *list, const char *stream, const char *group,
                     int delete, const char **argv, size_t *lens) {
    size_t n = list->elements;
    for (size_t i = 0; i < n; i++) {
        redisReply *id = list->element[i]->element[0];
        argv[3 + i] = id->str;
        lens[3 + i] = id->len;
    }
    argv[0] = "XACK"; lens[0] = 4;
    argv[1] = stream; lens[1] = strlen(stream);
    argv[2] = group; lens[2] = strlen(group);
    redisAppendCommandArgv(c, (int)(3 + n), argv, lens);
    if (!delete) return 1;
    /* XDEL <stream> <ids...>: the same ids, the command one slot further on
     * (hiredis copied the XACK into its output buffer already). */
    const char **xdel = argv + 1;
    size_t *xlens = lens + 1;
    xdel[0] = "XDEL"; xlens[0] = 4;
    xdel[1] = stream; xlens[1] = strlen(stream);
    redisAppendCommandArgv(c, (int)(2 + n), xdel, xlens);
    return 2;
}

int main(int argc, char **argv) {
    const char *url = "redis://127.0.0.1:6379/0", *stream = NULL, *group = "g";
    long count = 100, expect = 100000;
    int delete = 0, sequential = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!strcmp(a, "--delete")) delete = 1;
        else if (!strcmp(a, "--sequential")) sequential = 1;
        else if (!v) die("missing value for", a);
        else if (!strcmp(a, "--url")) url = v, i++;
        else if (!strcmp(a, "--stream")) stream = v, i++;
        else if (!strcmp(a, "--group")) group = v, i++;
        else if (!strcmp(a, "--count")) count = atol(v), i++;
        else if (!strcmp(a, "--expect")) expect = atol(v), i++;
        else die("unknown argument", a);
    }
    if (!stream) die("--stream is required", NULL);
    if (count < 1) die("--count must be >= 1", NULL);
    char host[256], count_s[32];
    int port, db;
    parse_url(url, host, sizeof host, &port, &db);
    snprintf(count_s, sizeof count_s, "%ld", count);
    const char **args = malloc(sizeof(char *) * (count + 4));
    size_t *lens = malloc(sizeof(size_t) * (count + 4));
    if (!args || !lens) die("out of memory", NULL);

    double t0 = now();
    redisContext *c = redisConnect(host, port);
    if (!c || c->err) die("connect", c ? c->errstr : "no context");
    if (db) {
        redisReply *r = redisCommand(c, "SELECT %d", db);
        if (!r || r->type == REDIS_REPLY_ERROR) die("SELECT", r ? r->str : c->errstr);
        freeReplyObject(r);
    }
    long done = 0;
    int acks_in_flight = 0;
    send_read(c, group, stream, count_s);
    while (done < expect) {
        drain_replies(c, acks_in_flight);
        acks_in_flight = 0;
        redisReply *r;
        if (redisGetReply(c, (void **)&r) != REDIS_OK) die("XREADGROUP", c->errstr);
        redisReply *list = entries_of(r);
        if (!list) {
            fprintf(stderr, "redis_ceiling_c: stream ran dry after %ld of %ld\n", done, expect);
            return 1;
        }
        acks_in_flight = send_acks(c, list, stream, group, delete, args, lens);
        done += (long)list->elements;
        freeReplyObject(r);
        if (sequential) {
            drain_replies(c, acks_in_flight);
            acks_in_flight = 0;
        }
        if (done < expect) send_read(c, group, stream, count_s);
    }
    drain_replies(c, acks_in_flight);
    double secs = now() - t0;
    printf("{\"n\": %ld, \"seconds\": %.6f, \"rate\": %.1f}\n", done, secs, done / secs);
    redisFree(c);
    free(args);
    free(lens);
    return 0;
}
