#ifndef AVFLOW_CODECS_BRIDGE_H
#define AVFLOW_CODECS_BRIDGE_H
#include <stdint.h>
#include <stdlib.h>
#include <libavutil/frame.h>
int avf_frame_size(const AVFrame *f, int video);
int avf_frame_to_buffer(const AVFrame *f, int video, uint8_t *dst, int size);
int avf_frame_from_buffer(AVFrame *f, int video, const uint8_t *src, int size);
void avf_linesizes(int fmt, int w, int out[4]);
int avf_set_layout(AVFrame *f, uint64_t mask, int nb);
uint64_t avf_layout_mask(const AVFrame *f);
int avf_codec_id(const char *name);
int avf_pix_fmt(const char *name);
int avf_sample_fmt(const char *name);
int avf_pix_fmt_hw(int fmt);
int avf_make_writable(AVFrame *f);
int avf_hw_download(AVFrame *dst, const AVFrame *src);
int avf_frame_copy_props(AVFrame *dst, const AVFrame *src);
int avf_pix_fmt_depth(int fmt);
#endif
