#include "sinkio.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <libavutil/avstring.h>
#include <libavutil/mem.h>

#define AVF_IO_BUF 65536

// A file the sink opened itself: an fd of its own, never through a link.
// A file the muxer writes is written as path (its name + ".tmp") and
// renamed to final when closed, unless the muxer writes a .tmp of its own.
typedef struct AvfFile {
    AvfSinkIO *io;
    AVIOInterruptCB int_cb; // the run's: a stopping run stops long writes too
    int fd;
    char *path;
    char *final; // NULL: path is the file's name
} AvfFile;

// A URL opened by FFmpeg's protocols, remembered to name it when closing fails.
typedef struct AvfNet {
    AVIOContext *pb;
    struct AvfNet *next;
    char url[];
} AvfNet;

// The io with what only this file sees: the network pbs open now.
typedef struct AvfSinkIOPriv {
    AvfSinkIO pub;
    AvfNet *nets;
} AvfSinkIOPriv;

static void record(AvfSinkIO *io, int err, const char *op, const char *url) {
    if (!io || io->err || err >= 0)
        return;
    io->err = err;
    av_strlcpy(io->err_op, op, sizeof(io->err_op));
    av_strlcpy(io->err_url, url ? url : "output", sizeof(io->err_url));
}

AvfSinkIO *avf_sink_io_new(void) {
    AvfSinkIOPriv *p = av_mallocz(sizeof(*p));
    return p ? &p->pub : NULL;
}

void avf_sink_io_free(AvfSinkIO *io) {
    AvfSinkIOPriv *p = (AvfSinkIOPriv *)io;
    if (!p)
        return;
    while (p->nets) {
        AvfNet *n = p->nets;
        p->nets = n->next;
        av_free(n);
    }
    av_dict_free(&io->net_opts);
    av_free(p);
}

int avf_sink_io_set_net_opt(AvfSinkIO *io, const char *key, const char *value) {
    return av_dict_set(&io->net_opts, key, value, 0);
}

static int interrupted(const AvfFile *f) {
    return f->int_cb.callback && f->int_cb.callback(f->int_cb.opaque);
}

static int file_write(void *opaque, uint8_t *buf, int size) {
    AvfFile *f = opaque;
    int done = 0;
    if (interrupted(f))
        return AVERROR_EXIT;
    while (done < size) {
        ssize_t n = write(f->fd, buf + done, size - done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            int err = AVERROR(errno);
            record(f->io, err, "writing", f->path);
            return err;
        }
        done += n;
    }
    return done;
}

static int file_read(void *opaque, uint8_t *buf, int size) {
    AvfFile *f = opaque;
    if (interrupted(f))
        return AVERROR_EXIT;
    for (;;) {
        ssize_t n = read(f->fd, buf, size);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return AVERROR(errno);
        return n == 0 ? AVERROR_EOF : (int)n;
    }
}

static int64_t file_seek(void *opaque, int64_t offset, int whence) {
    AvfFile *f = opaque;
    if (whence & AVSEEK_SIZE) {
        struct stat st;
        return fstat(f->fd, &st) < 0 ? AVERROR(errno) : st.st_size;
    }
    off_t r = lseek(f->fd, offset, whence & ~AVSEEK_FORCE);
    return r < 0 ? AVERROR(errno) : r;
}

static void free_file(AvfFile *f) {
    if (!f)
        return;
    av_free(f->path);
    av_free(f->final);
    av_free(f);
}

// wrap_fd makes an AVIOContext of fd (which it owns from then on) for s.
static int wrap_fd(AVFormatContext *s, int fd, const char *path, const char *final, int write, AVIOContext **pb) {
    AvfFile *f = av_mallocz(sizeof(*f));
    uint8_t *buf = av_malloc(AVF_IO_BUF);
    if (f) {
        f->path = av_strdup(path);
        f->final = final ? av_strdup(final) : NULL;
    }
    if (!f || !buf || !f->path || (final && !f->final)) {
        free_file(f);
        av_free(buf);
        close(fd);
        return AVERROR(ENOMEM);
    }
    f->io = s->opaque;
    f->int_cb = s->interrupt_callback;
    f->fd = fd;
    *pb = avio_alloc_context(buf, AVF_IO_BUF, write, f, write ? NULL : file_read, write ? file_write : NULL, file_seek);
    if (!*pb) {
        free_file(f);
        av_free(buf);
        close(fd);
        return AVERROR(ENOMEM);
    }
    return 0;
}

// file_path is the local path of url, or NULL for a URL of another protocol.
static const char *file_path(const char *url) {
    if (!strncmp(url, "file:", 5))
        return url + 5;
    return strstr(url, "://") ? NULL : url;
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && !strcmp(s + n - m, suffix);
}

// create_new creates path as a new file: what is at the name (a stale
// file, a link) is replaced, as the muxer would overwrite it, but never
// written through.
static int create_new(const char *path) {
    struct stat st;
    if (lstat(path, &st) == 0) {
        if (S_ISDIR(st.st_mode)) {
            errno = EISDIR;
            return -1;
        }
        unlink(path);
    }
    return open(path, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0666);
}

// open_file opens a local file without following a link. A file opened for
// writing is written as <path>.tmp and renamed to path when it is closed
// complete (a name ending in .tmp is the muxer's own temporary file, which
// it renames itself).
static int open_file(AVFormatContext *s, const char *path, int flags, AVIOContext **pb) {
    AvfSinkIO *io = s->opaque;
    if (!(flags & AVIO_FLAG_WRITE)) {
        int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
        return fd < 0 ? AVERROR(errno) : wrap_fd(s, fd, path, NULL, 0, pb);
    }
    char *tmp = ends_with(path, ".tmp") ? NULL : av_asprintf("%s.tmp", path);
    const char *name = tmp ? tmp : path;
    int fd = create_new(name);
    if (fd < 0) {
        int err = AVERROR(errno);
        record(io, err, "opening", name);
        av_free(tmp);
        return err;
    }
    int ret = wrap_fd(s, fd, name, tmp ? path : NULL, 1, pb);
    av_free(tmp);
    return ret;
}

static int open_net(AVFormatContext *s, AvfSinkIO *io, AVIOContext **pb, const char *url, int flags, AVDictionary **options) {
    AvfSinkIOPriv *p = (AvfSinkIOPriv *)io;
    AVDictionary *opts = NULL;
    av_dict_copy(&opts, io->net_opts, 0);
    if (options)
        av_dict_copy(&opts, *options, 0);
    int ret = avio_open2(pb, url, flags, &s->interrupt_callback, &opts);
    if (options) {
        av_dict_free(options);
        *options = opts;
    } else {
        av_dict_free(&opts);
    }
    if (ret < 0) {
        if (flags & AVIO_FLAG_WRITE)
            record(io, ret, "opening", url);
        return ret;
    }
    size_t len = strlen(url) + 1;
    AvfNet *n = av_malloc(sizeof(*n) + len);
    if (n) {
        n->pb = *pb;
        memcpy(n->url, url, len);
        n->next = p->nets;
        p->nets = n;
    }
    return 0;
}

static int io_open(AVFormatContext *s, AVIOContext **pb, const char *url, int flags, AVDictionary **options) {
    const char *path = file_path(url);
    if (path)
        return open_file(s, path, flags, pb);
    return open_net(s, s->opaque, pb, url, flags, options);
}

// take_net forgets a network pb and returns its URL (to be freed), or NULL.
static AvfNet *take_net(AvfSinkIO *io, AVIOContext *pb) {
    AvfSinkIOPriv *p = (AvfSinkIOPriv *)io;
    for (AvfNet **n = &p->nets; *n; n = &(*n)->next) {
        if ((*n)->pb == pb) {
            AvfNet *found = *n;
            *n = found->next;
            return found;
        }
    }
    return NULL;
}

static int io_close2(AVFormatContext *s, AVIOContext *pb) {
    AvfSinkIO *io = s->opaque;
    if (!pb)
        return 0;
    if (pb->write_packet != file_write && pb->read_packet != file_read) {
        int write = pb->write_flag;
        AvfNet *n = take_net(io, pb);
        int ret = avio_close(pb);
        if (ret < 0 && write)
            record(io, ret, "closing", n ? n->url : NULL);
        av_free(n);
        return ret;
    }
    AvfFile *f = pb->opaque;
    int write = pb->write_flag;
    if (write)
        avio_flush(pb);
    int ret = write ? pb->error : 0;
    if (close(f->fd) < 0 && ret >= 0) {
        ret = AVERROR(errno);
        if (write)
            record(io, ret, "closing", f->path);
    }
    if (f->final && ret >= 0 && write && interrupted(f))
        ret = AVERROR_EXIT; // closed by an abort: whatever it holds may be cut short
    if (f->final) {
        if (ret < 0) {
            unlink(f->path); // not complete: it must not take the real name
        } else if (rename(f->path, f->final) < 0) {
            ret = AVERROR(errno);
            record(io, ret, "renaming", f->final);
        }
    }
    av_freep(&pb->buffer);
    avio_context_free(&pb);
    free_file(f);
    return ret;
}

void avf_sink_install(AVFormatContext *s, AvfSinkIO *io) {
    s->opaque = io;
    s->io_open = io_open;
    s->io_close2 = io_close2;
}

int avf_sink_set_url(AVFormatContext *s, const char *url) {
    char *u = av_strdup(url);
    if (!u)
        return AVERROR(ENOMEM);
    av_free(s->url);
    s->url = u;
    return 0;
}

int avf_sink_open_fd(AVFormatContext *s, int fd, const char *path) {
    return wrap_fd(s, fd, path, NULL, 1, &s->pb);
}

int avf_sink_open_url(AVFormatContext *s, const char *url, AVDictionary **opts) {
    return open_net(s, s->opaque, &s->pb, url, AVIO_FLAG_WRITE, opts);
}

int avf_sink_close_pb(AVFormatContext *s) {
    if (!s->pb)
        return 0;
    int ret = io_close2(s, s->pb);
    s->pb = NULL;
    return ret;
}

int avf_sink_has_pb(const AVFormatContext *s) { return s->pb != NULL; }

int avf_dict_count(const AVDictionary *d) { return av_dict_count(d); }
