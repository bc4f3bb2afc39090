/*
 * The hand-written C contenders of `bufring bench`: the same receive loops as bufring's, written
 * directly against liburing, as the bar for the library's overhead.
 *
 * - stream: one io_uring, one provided buffer ring (classic or incremental), one multishot recv
 *   per socket; every buffer goes back with io_uring_buf_ring_add as soon as the kernel has
 *   retired it, and the whole batch is published with one io_uring_buf_ring_advance.
 * - hotpath: the same per-completion work on a fabricated completion stream, no kernel.
 *
 * Older liburing headers (Debian's 2.3) lack incremental consumption: the few names we need
 * are defined here when the header does not have them, and registration goes through
 * io_uring_register_buf_ring with the flags in the field 2.3 still calls `pad`.
 */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include <liburing.h>

#ifndef IOU_PBUF_RING_INC
#define IOU_PBUF_RING_INC 2
#endif
#ifndef IORING_CQE_F_BUF_MORE
#define IORING_CQE_F_BUF_MORE (1U << 4)
#endif

struct br_c_stream {
	struct io_uring ring;
	struct io_uring_buf_ring *br;
	size_t br_len;
	unsigned char *bufs;
	size_t bufs_len;
	unsigned buf_len, count, mask;
	int incremental;
	const int *fds;
	int nfds;
	int *done;
	int *rearm;
};

struct br_c_result {
	uint64_t bytes;
	uint64_t completions; /* completions that brought data */
	uint64_t enobufs;
	int32_t err; /* 0, or a negative errno */
};

void br_c_stream_free(struct br_c_stream *s)
{
	if (!s)
		return;
	if (s->br) {
		io_uring_unregister_buf_ring(&s->ring, 0);
		munmap(s->br, s->br_len);
	}
	io_uring_queue_exit(&s->ring);
	if (s->bufs)
		munmap(s->bufs, s->bufs_len);
	free(s->done);
	free(s->rearm);
	free(s);
}

static void arm(struct br_c_stream *s, int i)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&s->ring);
	if (!sqe) {
		io_uring_submit(&s->ring);
		sqe = io_uring_get_sqe(&s->ring);
	}
	io_uring_prep_recv_multishot(sqe, s->fds[i], NULL, 0, 0);
	sqe->flags |= IOSQE_BUFFER_SELECT;
	sqe->buf_group = 0;
	io_uring_sqe_set_data64(sqe, (uint64_t)i);
}

/* Sets up the ring, the buffers and one multishot recv per socket (not yet submitted).
 * Returns NULL and sets *err (negative errno) on failure. */
struct br_c_stream *br_c_stream_setup(const int *fds, int nfds, unsigned buf_len, unsigned count,
				      int incremental, int32_t *err)
{
	struct br_c_stream *s = calloc(1, sizeof(*s));
	unsigned entries = 1;
	int ret;

	*err = 0;
	if (!s) {
		*err = -ENOMEM;
		return NULL;
	}
	while (entries < count)
		entries <<= 1;
	ret = io_uring_queue_init(256, &s->ring, 0);
	if (ret < 0) {
		*err = ret;
		free(s);
		return NULL;
	}
	s->buf_len = buf_len;
	s->count = count;
	s->mask = entries - 1;
	s->incremental = incremental;
	s->fds = fds;
	s->nfds = nfds;
	s->done = calloc(nfds, sizeof(int));
	s->rearm = calloc(nfds, sizeof(int));
	s->bufs_len = (size_t)buf_len * count;
	s->bufs = mmap(NULL, s->bufs_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->bufs == MAP_FAILED) {
		s->bufs = NULL;
		*err = -errno;
		goto fail;
	}
	s->br_len = (entries * sizeof(struct io_uring_buf) + 4095) & ~(size_t)4095;
	s->br = mmap(NULL, s->br_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (s->br == MAP_FAILED) {
		s->br = NULL;
		*err = -errno;
		goto fail;
	}
	struct io_uring_buf_reg reg;
	memset(&reg, 0, sizeof(reg));
	reg.ring_addr = (uint64_t)(uintptr_t)s->br;
	reg.ring_entries = entries;
	reg.bgid = 0;
	/* `flags` in newer headers, `pad` in 2.3: the second u16 after ring_entries. */
	memcpy((char *)&reg + 14, &(uint16_t){incremental ? IOU_PBUF_RING_INC : 0}, 2);
	ret = io_uring_register_buf_ring(&s->ring, &reg, 0);
	if (ret < 0) {
		munmap(s->br, s->br_len);
		s->br = NULL;
		*err = ret;
		goto fail;
	}
	io_uring_buf_ring_init(s->br);
	for (unsigned bid = 0; bid < count; bid++)
		io_uring_buf_ring_add(s->br, s->bufs + (size_t)bid * buf_len, buf_len, bid, s->mask, bid);
	io_uring_buf_ring_advance(s->br, count);
	for (int i = 0; i < nfds; i++)
		arm(s, i);
	return s;
fail:
	br_c_stream_free(s);
	return NULL;
}

/* Receives until every socket reached end of stream or `timeout_ms` passed. */
void br_c_stream_run(struct br_c_stream *s, int timeout_ms, struct br_c_result *out)
{
	struct timespec start, now;
	int open = s->nfds;

	memset(out, 0, sizeof(*out));
	clock_gettime(CLOCK_MONOTONIC, &start);
	while (open > 0) {
		struct __kernel_timespec ts = {.tv_sec = 0, .tv_nsec = 100000000};
		struct io_uring_cqe *cqe, *first;
		unsigned head, seen = 0;
		int added = 0, nrearm = 0;

		clock_gettime(CLOCK_MONOTONIC, &now);
		if ((now.tv_sec - start.tv_sec) * 1000 + (now.tv_nsec - start.tv_nsec) / 1000000 >
		    timeout_ms) {
			out->err = -ETIMEDOUT;
			return;
		}
		int ret = io_uring_submit_and_wait_timeout(&s->ring, &first, 1, &ts, NULL);
		if (ret < 0 && ret != -ETIME && ret != -EINTR) {
			out->err = ret;
			return;
		}
		io_uring_for_each_cqe(&s->ring, head, cqe)
		{
			int i = (int)cqe->user_data;
			unsigned flags = cqe->flags;

			seen++;
			if (flags & IORING_CQE_F_BUFFER) {
				unsigned bid = flags >> IORING_CQE_BUFFER_SHIFT;

				out->completions++;

				if (bid >= s->count || cqe->res <= 0) {
					out->err = -EINVAL;
					return;
				}
				out->bytes += (unsigned)cqe->res;
				if (!s->incremental || !(flags & IORING_CQE_F_BUF_MORE))
					io_uring_buf_ring_add(s->br, s->bufs + (size_t)bid * s->buf_len,
							      s->buf_len, bid, s->mask, added++);
				if (!(flags & IORING_CQE_F_MORE))
					s->rearm[nrearm++] = i;
			} else if (cqe->res == 0) {
				s->done[i] = 1;
				open--;
			} else if (cqe->res == -ENOBUFS) {
				out->enobufs++;
				s->rearm[nrearm++] = i;
			} else if (cqe->res < 0) {
				out->err = cqe->res;
				return;
			}
		}
		io_uring_buf_ring_advance(s->br, added);
		io_uring_cq_advance(&s->ring, seen);
		for (int k = 0; k < nrearm; k++)
			if (!s->done[s->rearm[k]])
				arm(s, s->rearm[k]);
	}
}

/*
 * hotpath: `n` fabricated completions, taken from the ring in ring order as the kernel would,
 * `pieces` per buffer (1: classic; more: incremental, F_BUF_MORE on all but the last piece).
 * Per completion: decode the flags, check the bid, move the buffer's cursor, and when the
 * buffer is retired io_uring_buf_ring_add it back; io_uring_buf_ring_advance once per `batch`.
 * Returns the elapsed nanoseconds; *sink gets the bytes "delivered" so nothing is optimised out.
 */
uint64_t br_c_hotpath(unsigned count, unsigned buf_len, unsigned pieces, uint64_t n,
		      unsigned batch, uint64_t *sink)
{
	unsigned entries = 1, mask, piece = buf_len / pieces;
	struct io_uring_buf_ring *br;
	unsigned char *bufs;
	uint32_t *cursor;
	uint16_t head = 0;
	unsigned k = 0, inbatch = 0;
	int added = 0;
	uint64_t bytes = 0;
	struct timespec t0, t1;

	while (entries < count)
		entries <<= 1;
	mask = entries - 1;
	if (posix_memalign((void **)&br, 4096, entries * sizeof(struct io_uring_buf)))
		return 0;
	bufs = malloc((size_t)count * buf_len);
	cursor = calloc(count, sizeof(uint32_t));
	io_uring_buf_ring_init(br);
	for (unsigned bid = 0; bid < count; bid++)
		io_uring_buf_ring_add(br, bufs + (size_t)bid * buf_len, buf_len, bid, mask, bid);
	io_uring_buf_ring_advance(br, count);

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (uint64_t c = 0; c < n; c++) {
		/* The kernel's side, fabricated: the buffer at head, one piece of it. */
		struct io_uring_buf *b = &br->bufs[head & mask];
		int last = ++k == pieces;
		unsigned res_flags = IORING_CQE_F_BUFFER | IORING_CQE_F_MORE |
				     ((unsigned)b->bid << IORING_CQE_BUFFER_SHIFT) |
				     (last ? 0 : IORING_CQE_F_BUF_MORE);
		int res = (int)piece;
		if (last) {
			k = 0;
			head++;
		}
		__asm__ volatile("" : "+r"(res_flags), "+r"(res));

		/* The application's side. */
		if (!(res_flags & IORING_CQE_F_BUFFER))
			abort();
		unsigned bid = res_flags >> IORING_CQE_BUFFER_SHIFT;
		if (bid >= count || (unsigned)res > buf_len - cursor[bid])
			abort();
		unsigned char *data = bufs + (size_t)bid * buf_len + cursor[bid];
		__asm__ volatile("" : : "r"(data) : "memory");
		bytes += (unsigned)res;
		if (res_flags & IORING_CQE_F_BUF_MORE) {
			cursor[bid] += (unsigned)res;
		} else {
			cursor[bid] = 0;
			io_uring_buf_ring_add(br, bufs + (size_t)bid * buf_len, buf_len, bid, mask,
					      added++);
		}
		if (++inbatch == batch) {
			io_uring_buf_ring_advance(br, added);
			added = 0;
			inbatch = 0;
		}
	}
	clock_gettime(CLOCK_MONOTONIC, &t1);
	*sink = bytes;
	free(cursor);
	free(bufs);
	free(br);
	return (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000ull + (uint64_t)(t1.tv_nsec - t0.tv_nsec);
}
