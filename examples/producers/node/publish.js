// Publish a delivery-confirmation job to octopods-worker.
//   npm install && node publish.js store-eu 1234 +15551234567
// Persistent, mandatory, with publisher confirms: when the job id is printed,
// the broker has the job. AMQP_URL overrides the broker address.
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

const connection = await amqp.connect(url);
const channel = await connection.createConfirmChannel();
channel.on("return", (msg) => {
  console.error(`unroutable: ${msg.fields.routingKey}`);
  process.exitCode = 1;
});
channel.publish(`${prefix}.jobs`, channelName, Buffer.from(JSON.stringify(job)), {
  contentType: "application/json",
  persistent: true,
  mandatory: true,
  correlationId: job.job_id,
});
await channel.waitForConfirms(); // rejects if the broker nacked
console.log(job.job_id);
await connection.close();
