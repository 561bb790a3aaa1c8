// Read octopods-worker result events from your own durable queue.
//   node results.js --setup    # declare and bind the queue once, then exit
//   node results.js [job_id]   # exits 0 once that job's event arrived
import amqp from "amqplib";

const wanted = process.argv[2];
const url = process.env.AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const prefix = process.env.OCTOPODS_PREFIX ?? "octopods";
const queue = process.env.RESULTS_QUEUE ?? "shop.delivery-confirmations.node";

const connection = await amqp.connect(url);
const channel = await connection.createChannel();
await channel.assertQueue(queue, { durable: true });
// Routing keys are `<event>.<channel>`: `sent.#`, `dead_lettered.#`, or `#`.
await channel.bindQueue(queue, `${prefix}.results`, "#");
if (wanted === "--setup") {
  await connection.close();
  process.exit(0);
}
const timer = setTimeout(async () => {
  console.error(`no event for ${wanted} within 30 s`);
  process.exitCode = 1;
  await connection.close();
}, 30_000);
await channel.consume(queue, async (msg) => {
  const event = JSON.parse(msg.content.toString());
  channel.ack(msg);
  console.log(JSON.stringify(event));
  if (!wanted || event.job_id === wanted) {
    clearTimeout(timer);
    await connection.close();
  }
});
