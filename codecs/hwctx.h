#ifndef AVFLOW_CODECS_HWCTX_H
#define AVFLOW_CODECS_HWCTX_H
#include <libavcodec/avcodec.h>
#include <libavutil/frame.h>
#include <libavfilter/avfilter.h>
int avf_cc_width(const AVCodecContext *cc);
int avf_cc_set_device(AVCodecContext *cc, AVBufferRef *dev);
int avf_cc_set_derived_device(AVCodecContext *cc, AVBufferRef *dev, int type);
int avf_frame_on_device(const AVFrame *f, const AVBufferRef *dev);
int avf_cc_take_frames(AVCodecContext *cc, const AVFrame *f);
int avf_cc_frames_pool(AVCodecContext *cc, AVBufferRef *dev, int sw, int w, int h, int pool);
int avf_cc_upload(AVCodecContext *cc, AVFrame *dst, const AVFrame *src);
int avf_buffersrc_frames(AVFilterContext *src, const AVFrame *f);
int avf_graph_set_device(AVFilterGraph *g, AVBufferRef *dev);
#endif
