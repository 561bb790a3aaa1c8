// Publish a delivery-confirmation job to octopods-worker.
//   npm install && node publish.js store-eu 1234 +15551234567
//   WAIT_SECONDS=30 node publish.js store-eu 1234   # then print its result event
// Persistent, mandatory, with publisher confirms: when the job id is printed,
// the broker has the job. AMQP_URL overrides the broker address.
import crypto from "node:crypto";
import amqp from "amqplib";

const [channelName = "store-eu", orderId = "1234", phone = "+15551234567"] = process.argv.slice(2);
const url = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const prefix = process.env.OCTOPODS_PREFIX ?? "octopods";

const job = {
  job_id: `order-${orderId}/delivery-confirm`,
  destination_phone: phone,
  waba_interactive_message: {
    type: "button",
    body: { text: `Did your order #${orderId} arrive today?` },
    action: {
      buttons: [
        { type: "reply", reply: { id: "yes", title: "Yes, received" } },
        { type: "reply", reply: { id: "not-yet", title: "Not yet" } },
        { type: "reply", reply: { id: "problem", title: "There's a problem" } },
      ],
    },
  },
  channel: channelName,
  metadata: { order_id: orderId },
};

const waitSeconds = Number(process.env.WAIT_SECONDS ?? 0);

const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel();
let privateQueue;
if (waitSeconds > 0) {
  // A private queue (exclusive, gone when we disconnect), bound before
  // publishing: it gets copies of the channel's events, so acking other jobs'
  // events here takes nothing from the shop's results queue.
  ({ queue: privateQueue } = await channel.assertQueue("", { exclusive: true, autoDelete: true }));
  await channel.bindQueue(privateQueue, `${prefix}.results`, `*.${channelName}`);
}
channel.on("return", (msg) => {
  console.error(`unroutable: ${msg.fields.routingKey}`);
  process.exitCode = 1;
});
channel.publish(`${prefix}.jobs`, channelName, Buffer.from(JSON.stringify(job)), {
  contentType: "application/json",
  persistent: true,
  mandatory: true,
  correlationId: job.job_id,
  // The worker measures queue wait (octopods_job_queue_wait_seconds) from the
  // timestamp (seconds); messageId identifies the message in tools.
  messageId: job.job_id,
  timestamp: Math.floor(Date.now() / 1000),
  // W3C trace context: the worker continues this trace (with OpenTelemetry,
  // `propagation.inject(context.active(), headers)` fills it).
  headers: {
    traceparent:
      process.env.TRACEPARENT ||
      `00-${crypto.randomBytes(16).toString("hex")}-${crypto.randomBytes(8).toString("hex")}-01`,
  },
});
await channel.waitForConfirms(); // rejects if the broker nacked
console.log(job.job_id);
if (!privateQueue) {
  await connection.close();
} else {
  await channel.prefetch(50);
  const timer = setTimeout(async () => {
    console.error(`no event for ${job.job_id} within ${waitSeconds} s`);
    process.exitCode = 1;
    await connection.close();
  }, waitSeconds * 1000);
  await channel.consume(privateQueue, async (msg) => {
    if (msg === null) return;
    const event = JSON.parse(msg.content.toString());
    channel.ack(msg);
    if (event.job_id === job.job_id) {
      console.log(JSON.stringify(event));
      clearTimeout(timer);
      await connection.close();
    }
  });
}
