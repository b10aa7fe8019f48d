// C helpers for codec contexts bound to hardware devices: attaching a
// device, taking a decoder's device frames as they are, and pools of
// device frames that system-memory frames are uploaded into.
#include "hwctx.h"
#include <libavutil/hwcontext.h>
#include <libavutil/buffer.h>
#include <libavutil/error.h>
#include <libavutil/mem.h>
#include <libavfilter/buffersrc.h>

int avf_cc_width(const AVCodecContext *cc) { return cc->width; }

int avf_cc_set_device(AVCodecContext *cc, AVBufferRef *dev) {
	AVBufferRef *ref = av_buffer_ref(dev);
	if (!ref) return AVERROR(ENOMEM);
	av_buffer_unref(&cc->hw_device_ctx);
	cc->hw_device_ctx = ref;
	return 0;
}

int avf_cc_set_derived_device(AVCodecContext *cc, AVBufferRef *dev, int type) {
	AVBufferRef *ref = NULL;
	int ret = av_hwdevice_ctx_create_derived(&ref, type, dev, 0);
	if (ret < 0) return ret;
	av_buffer_unref(&cc->hw_device_ctx);
	cc->hw_device_ctx = ref;
	return 0;
}

int avf_frame_on_device(const AVFrame *f, const AVBufferRef *dev) {
	if (!f->hw_frames_ctx || !dev) return 0;
	const AVHWFramesContext *fc = (const AVHWFramesContext *)f->hw_frames_ctx->data;
	return fc->device_ref && fc->device_ref->data == dev->data;
}

int avf_cc_take_frames(AVCodecContext *cc, const AVFrame *f) {
	if (!f->hw_frames_ctx) return AVERROR(EINVAL);
	const AVHWFramesContext *fc = (const AVHWFramesContext *)f->hw_frames_ctx->data;
	AVBufferRef *ref = av_buffer_ref(f->hw_frames_ctx);
	if (!ref) return AVERROR(ENOMEM);
	av_buffer_unref(&cc->hw_frames_ctx);
	cc->hw_frames_ctx = ref;
	cc->pix_fmt = fc->format;
	cc->sw_pix_fmt = fc->sw_format;
	return 0;
}

int avf_cc_frames_pool(AVCodecContext *cc, AVBufferRef *dev, int sw, int w, int h, int pool) {
	AVHWFramesConstraints *cons = av_hwdevice_get_hwframe_constraints(dev, NULL);
	if (!cons) return AVERROR(ENOSYS);
	int hwfmt = cons->valid_hw_formats ? cons->valid_hw_formats[0] : AV_PIX_FMT_NONE;
	av_hwframe_constraints_free(&cons);
	if (hwfmt == AV_PIX_FMT_NONE) return AVERROR(ENOSYS);
	AVBufferRef *ref = av_hwframe_ctx_alloc(dev);
	if (!ref) return AVERROR(ENOMEM);
	AVHWFramesContext *fc = (AVHWFramesContext *)ref->data;
	fc->format = hwfmt;
	fc->sw_format = sw;
	fc->width = w;
	fc->height = h;
	fc->initial_pool_size = pool;
	int ret = av_hwframe_ctx_init(ref);
	if (ret < 0) {
		av_buffer_unref(&ref);
		return ret;
	}
	av_buffer_unref(&cc->hw_frames_ctx);
	cc->hw_frames_ctx = ref;
	cc->pix_fmt = hwfmt;
	cc->sw_pix_fmt = sw;
	return 0;
}

int avf_cc_upload(AVCodecContext *cc, AVFrame *dst, const AVFrame *src) {
	if (!cc->hw_frames_ctx) return AVERROR(EINVAL);
	int ret = av_hwframe_get_buffer(cc->hw_frames_ctx, dst, 0);
	if (ret < 0) return ret;
	ret = av_hwframe_transfer_data(dst, src, 0);
	if (ret < 0) return ret;
	return av_frame_copy_props(dst, src);
}

int avf_buffersrc_frames(AVFilterContext *src, const AVFrame *f) {
	AVBufferSrcParameters *p = av_buffersrc_parameters_alloc();
	if (!p) return AVERROR(ENOMEM);
	p->format = f->format;
	p->width = f->width;
	p->height = f->height;
	p->sample_aspect_ratio = f->sample_aspect_ratio;
	p->hw_frames_ctx = f->hw_frames_ctx; // referenced by the call
	int ret = av_buffersrc_parameters_set(src, p);
	av_free(p);
	return ret;
}

int avf_graph_set_device(AVFilterGraph *g, AVBufferRef *dev) {
	for (unsigned i = 0; i < g->nb_filters; i++) {
		AVFilterContext *fc = g->filters[i];
		if (fc->hw_device_ctx) continue;
		fc->hw_device_ctx = av_buffer_ref(dev);
		if (!fc->hw_device_ctx) return AVERROR(ENOMEM);
	}
	return 0;
}
