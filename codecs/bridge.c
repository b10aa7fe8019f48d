// C helpers for codecs: frame <-> buffer copies, channel layouts, name lookups.
#include "bridge.h"
#include <stdlib.h>
#include <string.h>
#include <libavutil/frame.h>
#include <libavutil/imgutils.h>
#include <libavutil/samplefmt.h>
#include <libavutil/channel_layout.h>
#include <libavutil/pixdesc.h>
#include <libavcodec/avcodec.h>
#include <libavutil/hwcontext.h>

int avf_frame_size(const AVFrame *f, int video) {
	if (video) return av_image_get_buffer_size(f->format, f->width, f->height, 1);
	return av_samples_get_buffer_size(NULL, f->ch_layout.nb_channels, f->nb_samples, f->format, 1);
}

int avf_frame_to_buffer(const AVFrame *f, int video, uint8_t *dst, int size) {
	if (video) {
		return av_image_copy_to_buffer(dst, size, (const uint8_t * const *)f->data, f->linesize, f->format, f->width, f->height, 1);
	}
	int planar = av_sample_fmt_is_planar(f->format);
	int ch = f->ch_layout.nb_channels;
	int bps = av_get_bytes_per_sample(f->format);
	int planes = planar ? ch : 1;
	int plane = f->nb_samples * bps * (planar ? 1 : ch);
	if (plane * planes > size) return AVERROR(EINVAL);
	for (int i = 0; i < planes; i++) memcpy(dst + i * plane, f->extended_data[i], plane);
	return plane * planes;
}

int avf_frame_from_buffer(AVFrame *f, int video, const uint8_t *src, int size) {
	int need = avf_frame_size(f, video);
	if (need < 0) return need;
	if (need != size) return AVERROR(EINVAL);
	int ret = av_frame_get_buffer(f, 0);
	if (ret < 0) return ret;
	if (video) {
		uint8_t *data[4]; int lines[4];
		ret = av_image_fill_arrays(data, lines, src, f->format, f->width, f->height, 1);
		if (ret < 0) return ret;
		av_image_copy(f->data, f->linesize, (const uint8_t **)data, lines, f->format, f->width, f->height);
		return 0;
	}
	int planar = av_sample_fmt_is_planar(f->format);
	int ch = f->ch_layout.nb_channels;
	int planes = planar ? ch : 1;
	int plane = f->nb_samples * av_get_bytes_per_sample(f->format) * (planar ? 1 : ch);
	for (int i = 0; i < planes; i++) memcpy(f->extended_data[i], src + i * plane, plane);
	return 0;
}

void avf_linesizes(int fmt, int w, int out[4]) {
	av_image_fill_linesizes(out, fmt, w);
}

int avf_set_layout(AVFrame *f, uint64_t mask, int nb) {
	av_channel_layout_uninit(&f->ch_layout);
	if (mask) return av_channel_layout_from_mask(&f->ch_layout, mask);
	if (nb <= 0) return AVERROR(EINVAL);
	av_channel_layout_default(&f->ch_layout, nb);
	return 0;
}

uint64_t avf_layout_mask(const AVFrame *f) {
	return f->ch_layout.order == AV_CHANNEL_ORDER_NATIVE ? f->ch_layout.u.mask : 0;
}

int avf_codec_id(const char *name) {
	const AVCodecDescriptor *d = avcodec_descriptor_get_by_name(name);
	return d ? (int)d->id : -1;
}

int avf_pix_fmt(const char *name) { return av_get_pix_fmt(name); }
int avf_sample_fmt(const char *name) { return av_get_sample_fmt(name); }
int avf_pix_fmt_hw(int fmt) {
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(fmt);
	return d && (d->flags & AV_PIX_FMT_FLAG_HWACCEL);
}

int avf_make_writable(AVFrame *f) { return av_frame_make_writable(f); }

// avf_hw_download copies a hardware frame into system memory (dst gets the
// device's software format, e.g. nv12) with the frame's timing and colour
// properties.
int avf_hw_download(AVFrame *dst, const AVFrame *src) {
    int ret = av_hwframe_transfer_data(dst, src, 0);
    if (ret < 0) return ret;
    return av_frame_copy_props(dst, src);
}

int avf_frame_copy_props(AVFrame *dst, const AVFrame *src) { return av_frame_copy_props(dst, src); }

int avf_pix_fmt_depth(int fmt) {
	const AVPixFmtDescriptor *d = av_pix_fmt_desc_get(fmt);
	return d ? d->comp[0].depth : 0;
}
