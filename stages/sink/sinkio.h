#ifndef AVFLOW_SINK_SINKIO_H
#define AVFLOW_SINK_SINKIO_H
#include <libavformat/avformat.h>

// AvfSinkIO is the I/O state of one sink's muxer (and of every muxer it
// nests, such as HLS's segment muxer, which shares its opaque): the
// options every network open gets and the first write that failed.
typedef struct AvfSinkIO {
    AVDictionary *net_opts; // given to every network avio_open2 (rw_timeout)
    int err;                // first failure (an AVERROR), 0 while none
    char err_op[16];        // "opening", "writing", "closing"
    char err_url[2048];     // the file or URL it happened on
} AvfSinkIO;

AvfSinkIO *avf_sink_io_new(void);
void avf_sink_io_free(AvfSinkIO *io);
int avf_sink_io_set_net_opt(AvfSinkIO *io, const char *key, const char *value);

// avf_sink_install makes s open and close its files through the sink: no
// link is followed, every write and close is checked and the first failure
// kept in io; other URLs go to FFmpeg's protocols with s's interrupt
// callback and io's network options.
void avf_sink_install(AVFormatContext *s, AvfSinkIO *io);
int avf_sink_set_url(AVFormatContext *s, const char *url);
// avf_sink_open_fd gives s a main output writing to fd, which it then owns.
int avf_sink_open_fd(AVFormatContext *s, int fd, const char *path);
// avf_sink_open_url opens s's main output on a URL (opts: protocol options;
// those no protocol takes are left in it).
int avf_sink_open_url(AVFormatContext *s, const char *url, AVDictionary **opts);
// avf_sink_close_pb closes s's main output, if open.
int avf_sink_close_pb(AVFormatContext *s);
int avf_sink_has_pb(const AVFormatContext *s);
int avf_dict_count(const AVDictionary *d);
#endif
